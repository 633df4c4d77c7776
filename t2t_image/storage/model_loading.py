"""Loading a trained model from a model directory for the sampler and exporter CLIs.

What a model directory ``D`` may hold, in the order they are tried:

1. ``D/model.keras``: a whole Keras model (``model.save("D/model.keras")``).
2. ``D/model_config.json`` (``keras.saving.serialize_keras_object(model)``,
   written by the trainer) plus a TF checkpoint of the model
   (``tf.train.Checkpoint(model=model, ...)``): the latest one in
   ``D/checkpoints/`` (the trainer's ``CheckpointManager``), else in ``D``.
   Checkpoints are found by listing (any folder name, a missing or damaged
   state file); an unreadable or non-finite newest one falls back to the next
   newest with a warning naming the file (``checkpoint_files.restore_newest``).

A prior of a two-stage model is decoded by exactly the first-stage checkpoint
its ``first_stage.json`` records (verified by content fingerprint).

``--checkpoint`` overrides the choice: a ``.keras`` file, or a TF checkpoint
prefix (e.g. ``D/checkpoints/ckpt-1000`` or ``D/averaged/ckpt-1000``) or a
directory holding one, read with the architecture of ``D/model_config.json``.
"""

import json
import os

from t2t_image.sampling.sampler import ensure_built
from t2t_image.storage.checkpoint_files import CheckpointNotFoundError
from t2t_image.storage.checkpoint_files import describe_found

MODEL_FILE = "model.keras"
CONFIG_FILE = "model_config.json"
CHECKPOINT_DIR = "checkpoints"
# Written into the model_dir of a prior over code grids: where its first stage is.
FIRST_STAGE_FILE = "first_stage.json"


def _from_config(model_dir):
    import keras

    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no {MODEL_FILE} and no {CONFIG_FILE} in --model_dir={model_dir}: cannot tell the "
            "model's architecture (save the model as model.keras, or keep the trainer's "
            f"{CONFIG_FILE} beside its checkpoints)."
        )
    import t2t_image.models  # noqa: F401  (registers the classes for deserialization)
    from t2t_image.storage import run_guard

    config = run_guard.read_model_config(model_dir)
    try:
        model = keras.saving.deserialize_keras_object(config)
    except Exception as e:  # noqa: BLE001 - any config Keras cannot build is a damaged file
        raise ValueError(f"{path} does not build a model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''}); restore it "
                         "from a copy of the run.") from e
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} describes a {type(model).__name__}, not a model; restore it "
                         "from a copy of the run.")
    ensure_built(model)
    return model


def _checkpoint_folder(path):
    """The folder of ``path`` that holds TF checkpoint files (checkpoints/ first), or None."""
    from t2t_image.storage import checkpoint_files

    for folder in (os.path.join(path, CHECKPOINT_DIR), path):
        if checkpoint_files.index_files(folder) or os.path.exists(
                os.path.join(folder, checkpoint_files.STATE_FILE)):
            return folder
    return None


def _restore(model, folder=None, exact=None):
    """Reads the newest readable checkpoint of ``folder`` (or ``exact``) into ``model``."""
    import tensorflow as tf

    from t2t_image.storage import checkpoint_files

    def read(prefix):
        try:
            tf.train.Checkpoint(model=model).read(prefix).expect_partial() \
                .assert_existing_objects_matched()
        except (AssertionError, ValueError) as e:
            raise ValueError(f"checkpoint {exact or folder} does not match the model of "
                             f"{CONFIG_FILE}: {e}") from e

    prefix, _ = checkpoint_files.restore_newest(
        read, folder or os.path.dirname(exact), name=None, variables=model.weights, exact=exact)
    return prefix


def _is_preset_folder(folder):
    from t2t_image.storage import presets

    return all(os.path.isfile(os.path.join(folder, name))
               for name in (presets.CONFIG_FILE, presets.WEIGHTS_FILE))


def load_model(model_dir, checkpoint=None):
    """Loads the model of a model directory (see the module docstring).

    As T2T's decoder and exporter restore ``tf.train.latest_checkpoint`` of
    their ``--output_dir`` into a model built from the hparams.

    Args:
        model_dir: str, the model directory.
        checkpoint: optional str, a ``.keras`` file, a TF checkpoint prefix, or
            a directory whose latest TF checkpoint to read.

    Returns:
        ``(model, source)``: the built Keras model and the path its weights
        came from.

    Raises:
        FileNotFoundError: when nothing loadable is found (the message says
            what was looked for).
        ValueError: when the checkpoint does not match the architecture.
    """
    import keras

    import t2t_image.models  # noqa: F401  (registers the classes for deserialization)

    if checkpoint is None and model_dir is None:
        raise ValueError("--model_dir (or --checkpoint) is required.")
    if checkpoint is None and _is_preset_folder(model_dir):  # e.g. a preset's first_stage/
        from t2t_image.storage import presets

        return presets.load_model_folder(model_dir), os.path.join(model_dir, presets.WEIGHTS_FILE)
    if checkpoint is None and os.path.isfile(os.path.join(model_dir, MODEL_FILE)):
        checkpoint = os.path.join(model_dir, MODEL_FILE)
    if checkpoint is not None and checkpoint.endswith(".keras"):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"--checkpoint={checkpoint}: no such file.")
        model = keras.saving.load_model(checkpoint)
        ensure_built(model)
        return model, checkpoint
    if checkpoint is not None and checkpoint.endswith(".npz"):
        if not os.path.isfile(checkpoint):  # a damaged one is refused naming what is wrong
            raise CheckpointNotFoundError(f"--checkpoint={checkpoint}: no such checkpoint file.")
        return _load_npz(model_dir, os.path.dirname(checkpoint), exact=checkpoint)
    folder = exact = npz_folder = None
    if checkpoint is None or os.path.isdir(checkpoint):
        root = model_dir if checkpoint is None else checkpoint
        folder, npz_folder = _checkpoint_folder(root), _npz_folder(root)
        if npz_folder is not None and (folder is None or _prefer_npz(folder, npz_folder)):
            return _load_npz(model_dir, npz_folder, other=folder)
        if folder is None:
            raise CheckpointNotFoundError(
                f"--checkpoint={checkpoint}: no TF checkpoint in it." if checkpoint else
                f"--model_dir={model_dir} has no {MODEL_FILE} and no TF checkpoint (looked in "
                f"{os.path.join(model_dir, CHECKPOINT_DIR)} and {model_dir}); nothing to load: "
                "train it first or check the path.")
        _check_backend_reads_tf(folder)
    else:
        exact = checkpoint
        if not os.path.exists(exact + ".index"):
            raise CheckpointNotFoundError(
                f"--checkpoint={checkpoint}: neither a .keras file nor a TF checkpoint prefix "
                f"({exact}.index does not exist)."
            )
        _check_backend_reads_tf(exact)
    model = _from_config(model_dir if model_dir is not None else os.path.dirname(exact))
    # Checkpoints are found by listing (any folder name), and an unreadable or
    # non-finite newest one falls back to the next (t2t_image.storage.checkpoint_files).
    try:
        prefix = _restore(model, folder, exact)
    except CheckpointNotFoundError:
        if npz_folder is None:
            raise
        from absl import logging

        logging.warning("No TF checkpoint of %s is readable; using its .npz checkpoints.",
                        folder)
        return _load_npz(model_dir, npz_folder)
    if prefix is None:
        raise CheckpointNotFoundError(
            f"{folder}: no complete TF checkpoint to load ({describe_found(folder)}).")
    return model, prefix


def _npz_folder(root):
    """The folder of ``root`` holding ``ckpt-N.npz`` files (JAX trainer), or None."""
    from t2t_image.storage import npz_checkpoints

    if root is None or not os.path.isdir(root):
        return None
    for folder in (os.path.join(root, CHECKPOINT_DIR), root):
        if npz_checkpoints.list_checkpoints(folder):
            return folder
    return None


def _prefer_npz(tf_folder, npz_folder):
    """Whether the newest .npz checkpoint is newer (by step) than the newest TF one.

    A model_dir trained under both backends (say, resumed under the other one
    by an older version) is read from its newest checkpoint of either kind,
    with a warning saying which.
    """
    from absl import logging

    from t2t_image.storage import checkpoint_files
    from t2t_image.storage import npz_checkpoints

    tf_newest = (checkpoint_files.index_files(tf_folder) or [None])[-1]
    npz_newest = npz_checkpoints.latest_checkpoint(npz_folder)
    tf_step = checkpoint_files.checkpoint_number(tf_newest) if tf_newest else -1
    npz_step = npz_checkpoints.checkpoint_step(npz_newest)
    prefer = npz_step > tf_step or (npz_step == tf_step and not _uses_tensorflow())
    if tf_newest:
        logging.warning(
            "%s holds checkpoints of both backends: TensorFlow's (newest %s) and JAX's .npz "
            "(newest %s); using the newest, %s.", tf_folder, os.path.basename(tf_newest),
            os.path.basename(npz_newest), npz_newest if prefer else tf_newest)
    return prefer


def _uses_tensorflow():
    from t2t_image.storage import files

    return files.uses_tensorflow()


def _check_backend_reads_tf(where):
    """Refuses TF checkpoints under the JAX backend, which cannot read them, by name."""
    from t2t_image.storage.checkpoint_files import CheckpointMismatchError

    if not _uses_tensorflow():
        raise CheckpointMismatchError(
            f"{where} holds TensorFlow checkpoints (written by the trainer under "
            "KERAS_BACKEND=tensorflow), which the JAX backend cannot read: run this tool with "
            "KERAS_BACKEND=tensorflow (or export the model as model.keras there).")


def _load_npz(model_dir, folder, exact=None, other=None):
    """The model of ``model_dir`` with the weights of the newest usable ``.npz`` of ``folder``.

    Damaged, crafted and non-finite files are skipped for the next newest with a
    warning (``npz_checkpoints.restore_newest``); when none is usable and
    ``other`` (a folder of TF checkpoints) exists, those are tried.
    """
    from t2t_image.storage import npz_checkpoints

    model_dir = model_dir if model_dir is not None else os.path.dirname(folder)
    model = _from_config(model_dir)

    def restore(path):
        weights = npz_checkpoints.read_checkpoint(path)[0]
        npz_checkpoints.set_weights_checked(model.weights, weights, "model weight", path)

    try:
        path, _ = npz_checkpoints.restore_newest(folder, restore, exact=exact)
    except CheckpointNotFoundError:
        if other is None or not _uses_tensorflow():
            raise
        from absl import logging

        logging.warning("No .npz checkpoint of %s is usable; trying its TF checkpoints.", folder)
        return model, _restore(model, other)
    return model, path


def first_stage_record_of(model_dir):
    """What a prior's model_dir records about its first stage (``first_stage.json``), or None.

    The trainer writes it into the model_dir of a prior over code grids (a
    dataset from ``t2t_image.two_stage.make_code_dataset``): the first stage's
    ``first_stage_dir`` and, since issue 16, the exact ``checkpoint`` the
    codes came from, its ``step`` and content ``fingerprint``.
    """

    if model_dir is None:
        return None
    path = os.path.join(model_dir, FIRST_STAGE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or "first_stage_dir" not in record:
        raise ValueError(f"{path} is not a first-stage record (no 'first_stage_dir').")
    return record


def first_stage_dir_of(model_dir):
    """The first stage's model directory recorded in a prior's model_dir, or None."""
    record = first_stage_record_of(model_dir)
    return record["first_stage_dir"] if record else None


def first_stage_record(first_stage_dir, checkpoint):
    """The record of the first stage whose codes a prior trains on (see ``first_stage_record_of``)."""
    from t2t_image.storage import checkpoint_files

    return {"first_stage_dir": os.path.abspath(first_stage_dir),
            "checkpoint": os.path.abspath(checkpoint),
            "step": checkpoint_files.checkpoint_number(checkpoint)
            if not checkpoint.endswith(".keras") else None,
            "fingerprint": checkpoint_files.fingerprint(checkpoint)}


def _describe(record):
    return f"{record['checkpoint']} (step {record.get('step')}, {record.get('fingerprint')})"


def check_same_first_stage(recorded, current, model_dir):
    """Raises CheckpointMismatchError unless ``current`` is the recorded first-stage checkpoint."""
    from t2t_image.storage.checkpoint_files import CheckpointMismatchError

    if recorded and recorded.get("fingerprint") and \
            recorded["fingerprint"] != current["fingerprint"]:
        raise CheckpointMismatchError(
            f"the prior in {model_dir} was trained on the codes of the first stage "
            f"{_describe(recorded)}, but its dataset now tokenizes with {_describe(current)}; "
            "resuming would train on other codes. Pin t2t_image.make_code_dataset.checkpoint "
            f"= '{recorded['checkpoint']}' or use a new --model_dir.")


def first_stage_checkpoint(record, first_stage_dir, model_dir=None):
    """The exact first-stage checkpoint a prior was trained with, found and verified.

    Looks for the recorded checkpoint at its recorded path, then under the same
    name in ``first_stage_dir`` (a moved or copied first stage) and accepts it
    only if its content fingerprint is the recorded one.

    Returns:
        The checkpoint path, or None for a record without a fingerprint
        (written before issue 16: the latest checkpoint is used, with a warning).

    Raises:
        CheckpointMismatchError: naming the recorded checkpoint and what
            ``first_stage_dir`` holds instead.
    """
    from absl import logging

    from t2t_image.storage import checkpoint_files

    if not record or not record.get("fingerprint"):
        if record:
            logging.warning("%s/%s does not record which first-stage checkpoint the prior was "
                            "trained with; decoding with the latest one in %s.", model_dir,
                            FIRST_STAGE_FILE, first_stage_dir)
        return None
    recorded = record["checkpoint"]
    name = os.path.basename(recorded)
    places = [recorded] + [os.path.join(first_stage_dir, sub, name)
                           for sub in (CHECKPOINT_DIR, "")]
    seen = []
    for path in dict.fromkeys(places):
        probe = path if path.endswith(".keras") else path + ".index"
        if not os.path.exists(probe):
            continue
        found = checkpoint_files.fingerprint(path)
        if found == record["fingerprint"]:
            return path
        seen.append(f"{path} has other weights ({found})")
    folder = _checkpoint_folder(first_stage_dir)
    latest = checkpoint_files.candidates(folder)[0][:1] if folder else []
    now = (f"; the latest there is {latest[0]} (step {checkpoint_files.checkpoint_number(latest[0])}"
           f", {checkpoint_files.fingerprint(latest[0])})" if latest else "")
    raise checkpoint_files.CheckpointMismatchError(
        f"the prior in {model_dir} was trained on the codes of the first stage "
        f"{_describe(record)}, which {first_stage_dir} no longer holds"
        + (f" ({'; '.join(seen)})" if seen else "") + now
        + ". Decoding with another first stage gives wrong images: restore that checkpoint "
        "(or pass --first_stage_dir of a copy of it), or retrain the prior.")


def load_model_and_first_stage(model_dir, checkpoint=None, first_stage_dir=None):
    """Loads a model and, for the prior of a two-stage model, its first stage.

    The first stage is loaded from exactly the checkpoint recorded in
    ``model_dir/first_stage.json`` (verified by its content fingerprint;
    ``first_stage_checkpoint``), not from the first stage's latest.

    Args:
        model_dir, checkpoint: as ``load_model``.
        first_stage_dir: the first stage's model directory; None: the one
            recorded in ``model_dir/first_stage.json``, if any.

    Returns:
        ``(model, source, first_stage, first_stage_dir)``; the last two are
        None for a one-stage model.

    Raises:
        FileNotFoundError, ValueError: as ``load_model``, for either stage;
        ``CheckpointMismatchError`` (a ValueError) when the recorded
        first-stage checkpoint is gone or changed.
    """
    model, source = load_model(model_dir, checkpoint)
    record = first_stage_record_of(model_dir)
    if first_stage_dir is None and record:
        first_stage_dir = record["first_stage_dir"]
    if not first_stage_dir:
        return model, source, None, None
    exact = first_stage_checkpoint(record, first_stage_dir, model_dir)
    first_stage = load_model(first_stage_dir, exact)[0]
    return model, source, first_stage, first_stage_dir


def load_model_source(model_dir=None, checkpoint=None, first_stage_dir=None, preset=None):
    """``load_model_and_first_stage``, or with ``preset`` that preset's model and first stage.

    Returns:
        ``(model, source, first_stage, first_stage_dir)``: for a preset the source
        is its folder and ``first_stage_dir`` is None (the first stage ships in it).
    """
    if preset:
        from t2t_image.storage import presets

        loaded = presets.load(preset)
        return loaded.model, f"preset {loaded.folder}", loaded.first_stage, None
    return load_model_and_first_stage(model_dir, checkpoint, first_stage_dir)
