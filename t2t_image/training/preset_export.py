"""Writes a preset (``t2t_image.storage.presets``) from a trained run.

``t2t-image-trainer --mode=export_preset --model_dir=D --preset_dir=P`` calls
``export_preset``: the run's newest readable checkpoint, as a float32 model,
scored on the whole evaluation split of the run's gin config (held-out
bits/dim) and on its first ``check_images`` images (the slice the preset tests
re-score under both backends), with a sample grid and a model card.
"""

import datetime
import json
import math
import os

import numpy as np

import t2t_image
from t2t_image.storage import presets
from t2t_image.storage import run_guard

CHECK_IMAGES = 16


class PresetExportError(ValueError):
    """A run that cannot become a preset (the message names why)."""


# Fraction of a prior's check codes that must equal the training pipeline's codes.
CODE_AGREEMENT = 0.98


def as_numpy(batch):
    """A feature dict of a tf.data or NumPy pipeline as NumPy arrays."""
    return {k: np.asarray(v) for k, v in batch.items()}


def float32_copy(model):
    """A float32 copy of ``model`` (same weights): presets store and score this."""
    import keras

    from t2t_image.sampling.sampler import ensure_built

    copy = keras.saving.deserialize_keras_object(presets.float32_config(model))
    ensure_built(copy)
    copy.set_weights(model.get_weights())
    return copy


def score(model, batches, limit=None):
    """Mean bits/dim of ``model`` over feature-dict batches (at most ``limit`` images).

    Returns:
        ``(bits_per_dim, num_images)``; per-image NLLs are summed in float64.
    """
    total, count = 0.0, 0
    for batch in batches:
        batch = as_numpy(batch)
        if limit is not None:
            batch = {k: v[:limit - count] for k, v in batch.items()}
        if not len(batch["targets"]):
            break
        nll = -np.asarray(model.log_prob(batch, training=False), np.float64)
        total += float(nll.sum())
        count += len(nll)
        if limit is not None and count >= limit:
            break
    if count == 0:
        raise PresetExportError("the evaluation split is empty: nothing to score the preset on.")
    return total / (count * model.num_dims * math.log(2.0)), count


def heldout_spec(split):
    """Where the held-out images are (the npz source of the gin config), for re-scoring.

    Presets are trained on the project's npz data; other sources give None
    (the preset then records no check slice).
    """
    import gin

    def query(name):  # bound in the eval scope (an operative config) or unscoped (a gin file)
        for scope in ("eval/", ""):
            try:
                return gin.query_parameter(f"{scope}t2t_image.NpzSource.{name}")
            except ValueError:
                continue
        raise KeyError(name)

    try:
        return {"split": split, **{key: query(key) for key in
                                   ("path", "image_key", "label_key", "inputs_key")}}
    except KeyError:  # no NpzSource in the config
        return None


def check_features(spec, count, model, first_stage=None):
    """The first ``count`` held-out feature dicts of ``spec``, read straight from its npz.

    ``spec`` is the preset's ``heldout.check.data``; for the prior of a
    two-stage model the images become code grids through ``first_stage``.
    """
    from t2t_image.data import splits
    from t2t_image.data.npz_source import image_and_label_keys

    from t2t_image.data.numpy_pipeline import area_resize_numpy

    def sized(images, size):  # as the pipeline: area-resized (truncated) when sizes differ
        if images.shape[1] == size and images.shape[2] == size:
            return images.astype(np.int32)
        return area_resize_numpy(images, size).astype(np.int32)

    image_model = first_stage if first_stage is not None else model
    with np.load(spec["path"]) as data:  # array names as NpzSource picks them
        image_key, label_key = image_and_label_keys(data.files, spec["path"], spec["image_key"],
                                                    spec["label_key"])
        images = data[image_key]
        parts = splits.parse_split(spec["split"])
        if len(parts) != 1:
            raise PresetExportError(f"check slices come from one split part, got {spec['split']!r}.")
        index = np.asarray(parts[0].indices(len(images)))[:count]
        features = {"targets": sized(images[index], image_model.image_height)}
        if getattr(model, "num_classes", None) is not None:
            if label_key is None:
                raise PresetExportError(f"{spec['path']} has no label array for the "
                                        "class-conditional model's check slice.")
            features["labels"] = data[label_key][index].astype(np.int32)
        if spec.get("inputs_key"):
            features["inputs"] = sized(data[spec["inputs_key"]][index], model.input_height)
    if first_stage is not None:
        codes = np.asarray(first_stage.encode_to_codes(features["targets"]))
        features["targets"] = codes.reshape(
            (len(codes), model.image_height, model.image_width, model.num_channels))
    return features


def rescore_check(preset):
    """Re-scores a loaded preset on its recorded check slice (data read from disk again).

    Returns:
        ``(bits_per_dim now, bits_per_dim recorded)``; they agree within float
        noise when the preset, the data and the code are what they were.
    """
    check = preset.metadata["heldout"]["check"]
    features = check_features(check["data"], check["num_images"], preset.model,
                              preset.first_stage)
    return score(preset.model, [features])[0], check["bits_per_dim"]


def _training_record(model_dir):
    """Steps and wall time of the run, from its files and TensorBoard events."""
    record = {}
    results = os.path.join(model_dir, "eval_results.json")
    if os.path.isfile(results):
        with open(results) as f:
            record["trainer_eval"] = json.load(f)
    settings = os.path.join(model_dir, run_guard.RUN_SETTINGS_NAME)
    if os.path.isfile(settings):
        with open(settings) as f:
            record["run_settings"] = json.load(f)
    record["wall_time_s"] = _event_span(os.path.join(model_dir, "train"))
    return record


def _first_stage_record(prior_dir, first_stage):
    """How the first stage of a two-stage prior was trained: command, steps, time, evaluation."""
    from t2t_image.storage.model_loading import first_stage_record_of

    record = {"class_name": type(first_stage).__name__,
              "parameters": int(first_stage.count_params())}
    found = first_stage_record_of(prior_dir)
    folder = found.get("first_stage_dir") if found else None
    if folder and os.path.isdir(folder):
        record.update(_training_record(folder))
        command = os.path.join(folder, "command.txt")
        if os.path.isfile(command):
            with open(command) as f:
                record["command"] = f.read().strip()
    return record


def _event_span(folder):
    """Seconds from the first to the last TensorBoard event in ``folder`` (None if none).

    For a run trained in one go this is its training time less start-up; a
    resumed run's span includes the time it was stopped.
    """
    if not os.path.isdir(folder):
        return None
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    times = []
    for name in sorted(os.listdir(folder)):
        if "tfevents" in name:
            for event in EventFileLoader(os.path.join(folder, name)).Load():
                if event.HasField("summary"):
                    times.append(event.wall_time)
    return round(max(times) - min(times), 1) if len(times) > 1 else None


def _first_stage_lines(record):
    if not record:
        return ""
    evaluated = record.get("trainer_eval", {})
    lines = [f"- First stage: `{record['class_name']}`, {record['parameters']:,} parameters"]
    if "psnr" in evaluated:
        lines[-1] += (f"; held-out PSNR {evaluated['psnr']:.2f} dB (bicubic upsampling of the "
                      "image area-downsampled to the code grid's size: "
                      f"{evaluated.get('bicubic_psnr', float('nan')):.2f} dB)")
    if record.get("wall_time_s"):
        lines[-1] += f"; trained in {record['wall_time_s'] / 60:.1f} minutes"
    if record.get("command"):
        lines.append(f"- First-stage command: `{record['command']}`")
    return "\n" + "\n".join(lines)


def model_card(name, metadata):
    """The preset's README.md: what it is, how it was made, what it is for and not for."""
    held = metadata["heldout"]
    training = metadata["training"]
    minutes = (f"{training['wall_time_s'] / 60:.1f} minutes"
               if training.get("wall_time_s") else "unknown time")
    unit = "bits per code" if metadata.get("first_stage") else "bits/dim"
    return f"""# Preset `{name}`

{metadata.get('description') or 'A model trained with t2t_image.'}

- Model: `{metadata['model']['class_name']}`, {metadata['model']['parameters']:,} parameters.
- Data: {metadata['data']['train']} (training), {metadata['data']['eval']} (held out).
- Held-out: **{held['bits_per_dim']:.4f} {unit}** on {held['num_images']} images
  (float32; the first {held['check']['num_images']} images: {held['check']['bits_per_dim']:.4f}).
- Training: {training['steps']} steps in {minutes} (`{training.get('precision')}`), made
  {metadata['date']} with t2t_image {metadata['package_version']}.
- Command: `{metadata['command']}`{_first_stage_lines(metadata.get('first_stage'))}

```python
import t2t_image
model = t2t_image.from_preset("{name}")
```

Intended use: trying the tools (sampling, completion, export, compression, fine-tuning)
on a model that has learned something, and as a starting point for fine-tuning. Limits:
a small model trained for minutes on a few thousand images on a CPU; its bits/dim are
far from the paper's and it has not been evaluated for any other purpose. The data's
licence terms apply (CIFAR-10: cite Krizhevsky 2009; CelebA: non-commercial research).
"""


def export_preset(trainer, preset_dir, command=None, description=None,
                  num_samples=16, check_images=CHECK_IMAGES, seed=0):
    """Writes the preset of ``trainer``'s run (restored here) to ``preset_dir``.

    Args:
        trainer: a built ``Trainer`` of the run (its gin config gives the data).
        preset_dir: the folder to write (replaced if it is a preset).
        command: the training command to record.
        description: one sentence for the model card.
        num_samples: images in ``samples.png``.
        check_images: how many held-out images the recorded check slice has.
        seed: sampling seed of the grid.

    Returns:
        The metadata written.
    """
    from t2t_image.sampling import sample_grid_for_summary
    from t2t_image.sampling.grids import image_grid
    from t2t_image.sampling.grids import png_bytes

    if trainer.eval_dataset is None:
        raise PresetExportError("exporting a preset needs t2t_image.Trainer.eval_dataset_fn: the "
                         "preset records its held-out bits/dim.")
    source = trainer.restore(required=True)
    step = int(trainer.step.numpy())
    model = float32_copy(trainer.model)
    decode = getattr(trainer.train_info, "decode_codes", None)
    first_stage = getattr(trainer.train_info, "first_stage_model", None)
    if decode is not None and first_stage is None:
        raise PresetExportError("the run is a prior over codes but its dataset does not expose its "
                         "first-stage model; cannot make a self-contained preset.")
    if first_stage is not None:  # the preset encodes in float32, as it is stored
        first_stage = float32_copy(first_stage)
    bits, count = score(model, trainer.eval_dataset)
    check_bits, check_count = score(model, trainer.eval_dataset, limit=check_images)
    check = {"num_images": check_count, "bits_per_dim": check_bits}
    eval_info = getattr(trainer, "eval_info", None)
    spec = heldout_spec(eval_info.split) if eval_info is not None else None
    if spec is not None:
        features = check_features(spec, check_count, model, first_stage)
        seen = as_numpy(next(iter(trainer.eval_dataset)))
        n = min(len(seen["targets"]), check_count)
        same = {k: float(np.mean(features[k][:n] == seen[k][:n]))
                if features[k][:n].shape == seen[k][:n].shape else 0.0 for k in features}
        # A prior's held-out codes were tokenized in the first stage's training precision;
        # in float32 a few codes near a tie between two codebook entries may flip.
        if min(same.values()) < (CODE_AGREEMENT if first_stage is not None else 1.0):
            raise PresetExportError(f"the held-out slice read from {spec['path']} ({spec['split']}) "
                             "differs from the evaluation data (equal fractions "
                             f"{ {k: round(v, 4) for k, v in same.items()} }): cannot "
                             "record a check slice.")
        # The check is what rescore_check recomputes: the slice read from disk.
        check["bits_per_dim"] = score(model, [features])[0]
        check["bits_per_dim_pipeline"] = check_bits
        check["data"] = spec
    labelled = getattr(model, "num_classes", None) is not None
    grid = sample_grid_for_summary(model, num_samples, seed=seed, decode=decode,
                                   eval_dataset=None if labelled else trainer.eval_dataset)
    png = png_bytes(image_grid(grid[None], num_columns=1, padding=0))
    info = trainer.train_info
    name = os.path.basename(os.path.abspath(preset_dir))
    operative = os.path.join(trainer.model_dir, "operative_config.gin")
    metadata = {
        "name": name,
        "description": description,
        "package_version": t2t_image.__version__,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "gin_config": open(operative).read() if os.path.isfile(operative) else None,
        "source_checkpoint": source,
        "model": {"class_name": type(model).__name__, "parameters": int(model.count_params())},
        "data": {"train": f"{info.source} [{info.split}]" if info is not None else None,
                 "eval": f"{eval_info.source} [{eval_info.split}]" if eval_info is not None
                 else None},
        "heldout": {"bits_per_dim": bits, "num_images": count,
                    "check": check},
        "training": dict(_training_record(trainer.model_dir), steps=step,
                         precision=trainer.precision or "float32"),
    }
    if first_stage is not None:
        metadata["first_stage"] = _first_stage_record(trainer.model_dir, first_stage)
    card = model_card(name, metadata).encode()
    return presets.write(preset_dir, model, metadata, first_stage=first_stage,
                         extra_files={"README.md": card, "samples.png": png})
