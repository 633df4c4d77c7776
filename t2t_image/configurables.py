"""The one place where t2t_image classes and functions are registered with gin.

Layers and models stay plain Keras classes; gin configures them here, at the
edge, under the module name ``t2t_image``. A gin file binds e.g.
``t2t_image.ImageTransformer.hidden_size = 512`` and hands the trainer
``model_fn = @t2t_image.ImageTransformer`` (a reference: the trainer builds the
model inside its distribution strategy). The trainer is the root
configurable. Runtime arguments (``training``, caches, ``model_dir``) are
call arguments and never configurable.
"""

import functools
import importlib

import gin
import keras

from t2t_image import data
from t2t_image import layers
from t2t_image import models
from t2t_image.training import trainer

MODULE = "t2t_image"
# Under the JAX backend, TensorFlow is imported only by a configuration that uses a
# TF-only piece (TFDS, image folders, the VQ first stage, code datasets).
USES_TENSORFLOW = keras.backend.backend() == "tensorflow"
STREAM_SOURCES = ("tfds", "image_folder")


def _tf_only(module, name):
    """The object ``module.name``, imported when first called under JAX (TF stays unloaded)."""
    if USES_TENSORFLOW:
        return getattr(importlib.import_module(module), name)

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    return call


def make_dataset_jax(source, *args, **kwargs):
    """``make_dataset`` under JAX: the NumPy pipeline for array sources, tf.data otherwise."""
    if getattr(source, "name", source) in STREAM_SOURCES:
        return data.make_dataset(source, *args, **kwargs)  # needs TensorFlow
    return data.make_numpy_dataset(source, *args, **kwargs)


ImageTransformer = gin.external_configurable(models.ImageTransformer, module=MODULE)
Img2ImgTransformer = gin.external_configurable(models.Img2ImgTransformer, module=MODULE)
VQAutoencoder = gin.external_configurable(models.VQAutoencoder, module=MODULE)
PatchDiscriminator = gin.external_configurable(layers.PatchDiscriminator, module=MODULE)
TfdsSource = gin.external_configurable(
    _tf_only("t2t_image.data.tfds_source", "TfdsSource"), "TfdsSource", module=MODULE)
Cifar10ArchiveSource = gin.external_configurable(data.Cifar10ArchiveSource, module=MODULE)
NpzSource = gin.external_configurable(data.NpzSource, module=MODULE)
ImageFolderSource = gin.external_configurable(
    _tf_only("t2t_image.data.image_folder", "ImageFolderSource"), "ImageFolderSource",
    module=MODULE)
make_dataset = gin.external_configurable(
    data.make_dataset if USES_TENSORFLOW else functools.wraps(data.make_numpy_dataset)(make_dataset_jax),
    "make_dataset", module=MODULE,
    denylist=["with_info", "num_shards", "shard_index"]
)
make_code_dataset = gin.external_configurable(
    _tf_only("t2t_image.two_stage.code_dataset", "make_code_dataset"), "make_code_dataset",
    module=MODULE, denylist=["with_info"] if USES_TENSORFLOW else None
)
Trainer = gin.external_configurable(
    trainer.Trainer, module=MODULE, denylist=["model_dir"]
)
FirstStageTrainer = gin.external_configurable(
    _tf_only("t2t_image.training.first_stage_trainer", "FirstStageTrainer"),
    "FirstStageTrainer", module=MODULE, denylist=["model_dir"] if USES_TENSORFLOW else None
)


@gin.configurable("train_job", module=MODULE)
def train_job(model_dir, trainer_class=Trainer):
    """The root of a run: the trainer class (``@t2t_image.FirstStageTrainer`` for a
    VQ first stage; the Image Transformer ``Trainer`` by default) built for ``model_dir``."""
    return trainer_class(model_dir=model_dir)
