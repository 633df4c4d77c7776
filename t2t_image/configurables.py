"""The one place where t2t_image classes and functions are registered with gin.

Layers and models stay plain Keras classes; gin configures them here, at the
edge, under the module name ``t2t_image``. A gin file binds e.g.
``t2t_image.ImageTransformer.hidden_size = 512`` and hands the trainer
``model_fn = @t2t_image.ImageTransformer`` (a reference: the trainer builds the
model inside its distribution strategy). The trainer is the root
configurable. Runtime arguments (``training``, caches, ``model_dir``) are
call arguments and never configurable.
"""

import gin

from t2t_image import data
from t2t_image import layers
from t2t_image import models
from t2t_image.training import first_stage_trainer
from t2t_image.training import trainer
from t2t_image.two_stage import code_dataset

MODULE = "t2t_image"

ImageTransformer = gin.external_configurable(models.ImageTransformer, module=MODULE)
Img2ImgTransformer = gin.external_configurable(models.Img2ImgTransformer, module=MODULE)
VQAutoencoder = gin.external_configurable(models.VQAutoencoder, module=MODULE)
PatchDiscriminator = gin.external_configurable(layers.PatchDiscriminator, module=MODULE)
TfdsSource = gin.external_configurable(data.TfdsSource, module=MODULE)
Cifar10ArchiveSource = gin.external_configurable(data.Cifar10ArchiveSource, module=MODULE)
NpzSource = gin.external_configurable(data.NpzSource, module=MODULE)
ImageFolderSource = gin.external_configurable(data.ImageFolderSource, module=MODULE)
make_dataset = gin.external_configurable(
    data.make_dataset, module=MODULE, denylist=["with_info"]
)
make_code_dataset = gin.external_configurable(
    code_dataset.make_code_dataset, module=MODULE, denylist=["with_info"]
)
Trainer = gin.external_configurable(
    trainer.Trainer, module=MODULE, denylist=["model_dir"]
)
FirstStageTrainer = gin.external_configurable(
    first_stage_trainer.FirstStageTrainer, module=MODULE, denylist=["model_dir"]
)


@gin.configurable("train_job", module=MODULE)
def train_job(model_dir, trainer_class=Trainer):
    """The root of a run: the trainer class (``@t2t_image.FirstStageTrainer`` for a
    VQ first stage; the Image Transformer ``Trainer`` by default) built for ``model_dir``."""
    return trainer_class(model_dir=model_dir)
