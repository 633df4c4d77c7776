"""Weight initializers shared by the layers.

T2T's image models set ``initializer="uniform_unit_scaling"`` with
``initializer_gain=0.2``, which TF maps to variance scaling with scale 0.2,
fan_avg, uniform; every variable created without an initializer of its own
gets it (kernels, the pixel and class tables). The learned position tables,
whose T2T code (``add_positional_embedding_nd``) passes an explicit
``random_normal_initializer(0, depth**-0.5)``, use ``embedding_normal``.
"""

import keras


def t2t_variance_scaling():
    """The T2T image-model default initializer for kernels and tables."""
    return keras.initializers.VarianceScaling(
        scale=0.2, mode="fan_avg", distribution="uniform"
    )


def embedding_normal(depth):
    """Normal(0, depth**-0.5), as T2T's embedding and positional tables use."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=float(depth) ** -0.5)
