"""The one place where t2t_image classes and functions are registered with gin.

Layers and models stay plain Keras classes; gin configures them here, at the
edge, under the module name ``t2t_image``. A gin file binds e.g.
``t2t_image.ImageTransformer.hidden_size = 512`` and passes
``@t2t_image.ImageTransformer()`` to the trainer. Runtime arguments
(``training``, caches) are call arguments and never configurable.
"""

import gin

from t2t_image import models

MODULE = "t2t_image"

ImageTransformer = gin.external_configurable(models.ImageTransformer, module=MODULE)
