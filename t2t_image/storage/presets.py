"""Presets: trained models shipped as folders, loadable by name or path.

A preset folder (the KerasHub layout) holds:

- ``config.json``: the Keras-serialised model (float32 policy);
- ``model.weights.h5``: its weights (``model.save_weights``);
- ``first_stage/config.json`` and ``first_stage/model.weights.h5``: for the
  prior of a two-stage model, the first stage whose codes it models;
- ``metadata.json``: package version, training command and gin config, steps,
  wall time, data and split, held-out bits/dim, date, and the content
  ``fingerprint`` of the files above;
- ``README.md`` (a model card) and ``samples.png``.

``load`` refuses a preset whose files are missing, unreadable or whose
fingerprint does not match ``metadata.json``, naming the preset and the file.
Names resolve in ``$T2T_IMAGE_PRESETS`` (if set) and then in the repository's
``presets/`` folder; anything with a path separator, or an existing folder, is
taken as a path.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
FIRST_STAGE_DIR = "first_stage"
FORMAT_VERSION = 1
ENV_VAR = "T2T_IMAGE_PRESETS"
# The repository's presets/ folder (beside the package in a checkout).
BUILTIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "presets")


class PresetError(ValueError):
    """A preset that cannot be found or is damaged; the message names it."""


@dataclasses.dataclass
class Preset:
    """A loaded preset: the model, its first stage (two-stage priors) and metadata."""

    name: str
    folder: str
    model: object
    first_stage: object
    metadata: dict


def search_dirs():
    """The folders a preset name is looked up in, in order."""
    dirs = [os.environ[ENV_VAR]] if os.environ.get(ENV_VAR) else []
    return dirs + [BUILTIN_DIR]


def available():
    """Names of the presets in the search folders (those with a metadata.json)."""
    names = set()
    for folder in search_dirs():
        if os.path.isdir(folder):
            names.update(n for n in os.listdir(folder)
                         if os.path.isfile(os.path.join(folder, n, METADATA_FILE)))
    return sorted(names)


def resolve(name_or_path):
    """The folder of a preset given by name or path; PresetError when there is none."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise PresetError(f"a preset is a name or a folder path, got {name_or_path!r}.")
    if os.sep in name_or_path or os.path.isdir(name_or_path):
        if not os.path.isdir(name_or_path):
            raise PresetError(f"preset folder {name_or_path} does not exist.")
        return os.path.abspath(name_or_path)
    for folder in search_dirs():
        candidate = os.path.join(folder, name_or_path)
        if os.path.isdir(candidate):
            return candidate
    raise PresetError(f"no preset named {name_or_path!r}; available: "
                      f"{', '.join(available()) or 'none'} (in {', '.join(search_dirs())}).")


def _model_files(folder):
    """The files a preset's fingerprint covers, relative to its folder, sorted."""
    found = []
    for sub in ("", FIRST_STAGE_DIR):
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if os.path.isfile(os.path.join(folder, sub, name)):
                found.append(os.path.join(sub, name) if sub else name)
    return sorted(found)


def fingerprint(folder, names=None):
    """``sha256:<hex>`` over the names and bytes of the preset's model files."""
    digest = hashlib.sha256()
    for name in names if names is not None else _model_files(folder):
        digest.update(name.encode() + b"\0")
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def read_metadata(folder):
    """The preset's metadata.json (checked to be a dict), or PresetError naming the file."""
    path = os.path.join(folder, METADATA_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
    except FileNotFoundError:
        raise PresetError(f"preset {folder} has no {METADATA_FILE}: not a preset folder, "
                          "or an incomplete copy.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PresetError(f"preset {folder}: {path} is damaged ({e}).") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("files"), list) \
            or not isinstance(metadata.get("fingerprint"), str):
        raise PresetError(f"preset {folder}: {path} lacks the 'files' list or the "
                          "'fingerprint' of the model files.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise PresetError(f"preset {folder}: format_version {metadata.get('format_version')!r} "
                          f"in {path}; this t2t_image reads version {FORMAT_VERSION}.")
    return metadata


def verify(folder):
    """Checks every model file is present and the fingerprint matches; returns the metadata."""
    metadata = read_metadata(folder)
    names = metadata["files"]
    for name in names:
        if not isinstance(name, str) or os.path.isabs(name) or ".." in name.split(os.sep) \
                or not os.path.isfile(os.path.join(folder, name)):
            raise PresetError(f"preset {folder}: model file {name!r} listed in "
                              f"{METADATA_FILE} is missing.")
    found = fingerprint(folder, names)
    if found != metadata["fingerprint"]:
        raise PresetError(
            f"preset {folder}: its files ({', '.join(names)}) do not match the fingerprint in "
            f"{METADATA_FILE} ({metadata['fingerprint']}, found {found}): damaged or "
            "modified; restore the preset from the repository.")
    return metadata


def load_model_folder(folder, what=None):
    """The built model of a preset folder (or its ``first_stage/``), unverified."""
    import keras

    import t2t_image.models  # noqa: F401  (registers the classes for deserialization)
    from t2t_image.sampling.sampler import ensure_built

    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
            model = keras.saving.deserialize_keras_object(json.load(f))
        ensure_built(model)
        model.load_weights(os.path.join(folder, WEIGHTS_FILE))
    except (OSError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PresetError(f"preset {what or folder}: cannot load {folder} ({first}).") from None
    return model


def load(name_or_path):
    """Loads a preset (verified first); returns a ``Preset``."""
    folder = resolve(name_or_path)
    metadata = verify(folder)
    model = load_model_folder(folder, folder)
    first_stage = None
    if os.path.isdir(os.path.join(folder, FIRST_STAGE_DIR)):
        first_stage = load_model_folder(os.path.join(folder, FIRST_STAGE_DIR), folder)
    return Preset(os.path.basename(folder), folder, model, first_stage, metadata)


def float32_config(model):
    """The model's Keras config with a float32 dtype policy (how presets store it)."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    inner = config.get("config", {})
    if "dtype" in inner:
        inner["dtype"] = keras.saving.serialize_keras_object(keras.DTypePolicy("float32"))
    return config


def write(folder, model, metadata, first_stage=None, extra_files=None):
    """Writes a preset folder atomically (a temporary sibling renamed into place).

    Args:
        folder: the preset folder to create; an existing one is replaced only
            if it is a preset (has a metadata.json).
        model, first_stage: built Keras models (first_stage for two-stage priors).
        metadata: dict of what to record; ``files``, ``fingerprint`` and
            ``format_version`` are added.
        extra_files: dict {name: bytes} written beside (model card, samples).

    Returns:
        The metadata as written.
    """
    folder = os.path.abspath(folder)
    if os.path.exists(folder) and not os.path.isfile(os.path.join(folder, METADATA_FILE)):
        raise PresetError(f"--preset_dir={folder} exists and is not a preset folder; "
                          "choose a new folder.")
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".preset-", dir=parent)
    try:
        for sub, part in (("", model), (FIRST_STAGE_DIR, first_stage)):
            if part is None:
                continue
            os.makedirs(os.path.join(staging, sub), exist_ok=True)
            with open(os.path.join(staging, sub, CONFIG_FILE), "w", encoding="utf-8") as f:
                json.dump(float32_config(part), f, indent=2)
            part.save_weights(os.path.join(staging, sub, WEIGHTS_FILE))
        for name, data in (extra_files or {}).items():
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        names = _model_files(staging)
        metadata = dict(metadata, format_version=FORMAT_VERSION, files=names,
                        fingerprint=fingerprint(staging, names))
        with open(os.path.join(staging, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        if os.path.exists(folder):
            old = folder + ".old"
            os.rename(folder, old)
            os.rename(staging, folder)
            shutil.rmtree(old)
        else:
            os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metadata
