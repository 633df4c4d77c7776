"""Loading a trained model from a model directory for the sampler and exporter CLIs.

What a model directory ``D`` may hold, in the order they are tried:

1. ``D/model.keras``: a whole Keras model (``model.save("D/model.keras")``).
2. ``D/model_config.json`` (``keras.saving.serialize_keras_object(model)``,
   written by the trainer) plus a TF checkpoint of the model
   (``tf.train.Checkpoint(model=model, ...)``): the latest one in
   ``D/checkpoints/`` (the trainer's ``CheckpointManager``), else in ``D``.

``--checkpoint`` overrides the choice: a ``.keras`` file, or a TF checkpoint
prefix (e.g. ``D/checkpoints/ckpt-1000`` or ``D/averaged/ckpt-1000``) or a
directory holding one, read with the architecture of ``D/model_config.json``.
"""

import json
import os

from t2t_image.sampling.sampler import ensure_built

MODEL_FILE = "model.keras"
CONFIG_FILE = "model_config.json"
CHECKPOINT_DIR = "checkpoints"


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

    with open(path) as f:
        model = keras.saving.deserialize_keras_object(json.load(f))
    ensure_built(model)
    return model


def _latest_checkpoint(path):
    import tensorflow as tf

    for folder in (os.path.join(path, CHECKPOINT_DIR), path):
        if os.path.isdir(folder):
            latest = tf.train.latest_checkpoint(folder)
            if latest:
                return latest
    return None


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
    import tensorflow as tf

    import t2t_image.models  # noqa: F401  (registers the classes for deserialization)

    if checkpoint is None and model_dir is None:
        raise ValueError("--model_dir (or --checkpoint) is required.")
    if checkpoint is None and os.path.isfile(os.path.join(model_dir, MODEL_FILE)):
        checkpoint = os.path.join(model_dir, MODEL_FILE)
    if checkpoint is not None and checkpoint.endswith(".keras"):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"--checkpoint={checkpoint}: no such file.")
        model = keras.saving.load_model(checkpoint)
        ensure_built(model)
        return model, checkpoint
    if checkpoint is None:
        prefix = _latest_checkpoint(model_dir)
        if prefix is None:
            raise FileNotFoundError(
                f"--model_dir={model_dir} has no {MODEL_FILE} and no TF checkpoint (looked in "
                f"{os.path.join(model_dir, CHECKPOINT_DIR)} and {model_dir})."
            )
    elif os.path.isdir(checkpoint):
        prefix = _latest_checkpoint(checkpoint)
        if prefix is None:
            raise FileNotFoundError(f"--checkpoint={checkpoint}: no TF checkpoint in it.")
    else:
        prefix = checkpoint
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(
                f"--checkpoint={checkpoint}: neither a .keras file nor a TF checkpoint prefix "
                f"({prefix}.index does not exist)."
            )
    model = _from_config(model_dir if model_dir is not None else os.path.dirname(prefix))
    try:
        status = tf.train.Checkpoint(model=model).read(prefix)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise ValueError(
            f"checkpoint {prefix} does not match the model of {CONFIG_FILE}: {e}"
        ) from e
    return model, prefix


def first_stage_dir_of(model_dir):
    """The first stage's model directory recorded in a prior's model_dir, or None.

    The trainer writes ``first_stage.json`` into the model_dir of a prior over
    code grids (a dataset from ``t2t_image.two_stage.make_code_dataset``).
    """
    from t2t_image.training.trainer import FIRST_STAGE_FILE

    path = os.path.join(model_dir, FIRST_STAGE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["first_stage_dir"]


def load_model_and_first_stage(model_dir, checkpoint=None, first_stage_dir=None):
    """Loads a model and, for the prior of a two-stage model, its first stage.

    Args:
        model_dir, checkpoint: as ``load_model``.
        first_stage_dir: the first stage's model directory; None: the one
            recorded in ``model_dir/first_stage.json``, if any.

    Returns:
        ``(model, source, first_stage, first_stage_dir)``; the last two are
        None for a one-stage model.

    Raises:
        FileNotFoundError, ValueError: as ``load_model``, for either stage.
    """
    model, source = load_model(model_dir, checkpoint)
    if first_stage_dir is None and model_dir is not None:
        first_stage_dir = first_stage_dir_of(model_dir)
    first_stage = load_model(first_stage_dir)[0] if first_stage_dir else None
    return model, source, first_stage, first_stage_dir or None
