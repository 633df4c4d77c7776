"""The convolutional residual block of the VQGAN encoder and decoder."""

import keras
from keras import ops


def check_num_groups(num_groups, channels, setting):
    """Raises ValueError unless ``num_groups`` divides ``channels`` (named ``setting``)."""
    if not isinstance(num_groups, int) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}.")
    if channels % num_groups:
        raise ValueError(
            f"num_groups={num_groups} must divide the channels of every group "
            f"normalization, but {setting} has {channels} channels."
        )


@keras.saving.register_keras_serializable(package="t2t_image")
class ResidualConvBlock(keras.layers.Layer):
    """Pre-activation residual block: (GroupNorm -> swish -> conv3x3) twice + skip.

    ``y = skip(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))`` where the
    skip is the identity when the input already has ``filters`` channels and a
    1x1 convolution otherwise. Group normalization runs in float32 whatever
    the dtype policy. The ``ResnetBlock`` of Esser et al. 2021 ("Taming
    Transformers", Sec. 3.1 and the appendix architecture table, without
    dropout or time embedding).

    Args:
        filters: int, output channels.
        num_groups: int, groups of both group normalizations; must divide the
            input channels and ``filters``.
        norm_epsilon: float, group-norm epsilon (Taming: 1e-6).
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `[batch, height, width, channels]`.

    Returns:
        Float tensor `[batch, height, width, filters]`.

    Example:
    >>> block = ResidualConvBlock(filters=32, num_groups=8)
    >>> block(np.zeros((2, 8, 8, 16), "float32")).shape
    (2, 8, 8, 32)
    """

    def __init__(self, filters, num_groups=32, norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"filters must be a positive int, got {filters!r}.")
        check_num_groups(num_groups, filters, f"filters={filters}")
        if not norm_epsilon > 0:
            raise ValueError(f"norm_epsilon must be positive, got {norm_epsilon!r}.")
        self.filters = filters
        self.num_groups = num_groups
        self.norm_epsilon = norm_epsilon

    def _norm(self, name):
        # Group norm statistics are numerics-sensitive: computed in float32 under any policy.
        return keras.layers.GroupNormalization(
            groups=self.num_groups, epsilon=self.norm_epsilon, dtype="float32", name=name
        )

    def _conv(self, kernel_size, name):
        return keras.layers.Conv2D(
            self.filters, kernel_size, padding="same", dtype=self.dtype_policy, name=name
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"ResidualConvBlock needs a known channel count, got {input_shape}.")
        check_num_groups(self.num_groups, channels, f"the input of shape {tuple(input_shape)}")
        output_shape = tuple(input_shape[:-1]) + (self.filters,)
        self.norm1 = self._norm("norm1")
        self.norm1.build(input_shape)
        self.conv1 = self._conv(3, "conv1")
        self.conv1.build(input_shape)
        self.norm2 = self._norm("norm2")
        self.norm2.build(output_shape)
        self.conv2 = self._conv(3, "conv2")
        self.conv2.build(output_shape)
        self.skip = None
        if channels != self.filters:
            self.skip = self._conv(1, "skip")
            self.skip.build(input_shape)

    def call(self, inputs):
        h = ops.silu(ops.cast(self.norm1(inputs), self.compute_dtype))
        h = self.conv1(h)
        h = ops.silu(ops.cast(self.norm2(h), self.compute_dtype))
        h = self.conv2(h)
        skip = inputs if self.skip is None else self.skip(inputs)
        return skip + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, num_groups=self.num_groups, norm_epsilon=self.norm_epsilon
        )
        return config
