"""The convolutional encoder of the VQ autoencoder (VQGAN's first stage)."""

import keras
from keras import ops

from t2t_image.layers.residual_conv_block import ResidualConvBlock
from t2t_image.layers.residual_conv_block import check_num_groups


def check_conv_stack_settings(base_channels, channel_multipliers, num_res_blocks, num_groups):
    """Validates the settings shared by `ConvEncoder` and `ConvDecoder`.

    Returns ``channel_multipliers`` as a tuple of ints; raises ValueError
    naming the setting otherwise.
    """
    if not isinstance(base_channels, int) or base_channels <= 0:
        raise ValueError(f"base_channels must be a positive int, got {base_channels!r}.")
    multipliers = tuple(channel_multipliers)
    if not multipliers or any(not isinstance(m, int) or m <= 0 for m in multipliers):
        raise ValueError(
            "channel_multipliers must be a non-empty sequence of positive ints, got "
            f"{channel_multipliers!r}."
        )
    if not isinstance(num_res_blocks, int) or num_res_blocks < 0:
        raise ValueError(f"num_res_blocks must be an int >= 0, got {num_res_blocks!r}.")
    check_num_groups(num_groups, base_channels, f"base_channels={base_channels}")
    for m in multipliers:
        check_num_groups(
            num_groups, base_channels * m,
            f"base_channels={base_channels} x channel_multiplier {m}",
        )
    return multipliers


@keras.saving.register_keras_serializable(package="t2t_image")
class ConvEncoder(keras.layers.Layer):
    """Convolutional encoder: image `[b, H, W, C]` -> latents `[b, H/f, W/f, code_dim]`.

    ``conv_in`` (3x3 to ``base_channels``), then for each level ``i`` of
    ``channel_multipliers``: ``num_res_blocks`` `ResidualConvBlock`s with
    ``base_channels * channel_multipliers[i]`` channels followed, except after
    the last level, by a stride-2 3x3 convolution ("same" padding: zero rows
    and columns on the bottom/right only, as Taming pads (0, 1, 0, 1));
    finally group norm, swish and a 3x3 convolution to ``code_dim``. The
    downsampling factor is ``f = 2 ** (len(channel_multipliers) - 1)``.
    Esser et al. 2021 ("Taming Transformers"), Sec. 3.1, the encoder ``E``
    (without the attention blocks of the middle stage).

    Args:
        base_channels: int, channels of the first level.
        channel_multipliers: sequence of ints, per-level channel multipliers.
        num_res_blocks: int, residual blocks per level.
        code_dim: int, output channels (the codebook dimension n_z).
        num_groups: int, group-norm groups; must divide every level's channels.
        norm_epsilon: float, group-norm epsilon.
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `[batch, height, width, channels]` (the VQ
            autoencoder feeds images scaled to [-1, 1]); height and width must
            be divisible by ``f``.

    Returns:
        Float tensor `[batch, height / f, width / f, code_dim]`.

    Example:
    >>> encoder = ConvEncoder(base_channels=16, channel_multipliers=(1, 2),
    ...     num_res_blocks=1, code_dim=8, num_groups=8)
    >>> encoder(np.zeros((2, 8, 8, 3), "float32")).shape
    (2, 4, 4, 8)
    """

    def __init__(
        self,
        base_channels=64,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        code_dim=64,
        num_groups=32,
        norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.base_channels = base_channels
        self.channel_multipliers = check_conv_stack_settings(
            base_channels, channel_multipliers, num_res_blocks, num_groups
        )
        if not isinstance(code_dim, int) or code_dim <= 0:
            raise ValueError(f"code_dim must be a positive int, got {code_dim!r}.")
        self.num_res_blocks = num_res_blocks
        self.code_dim = code_dim
        self.num_groups = num_groups
        self.norm_epsilon = norm_epsilon

    @property
    def downsample_factor(self):
        """Spatial reduction factor f = 2 ** (number of levels - 1)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    def build(self, input_shape):
        f = self.downsample_factor
        for axis, name in ((1, "height"), (2, "width")):
            size = input_shape[axis]
            if size is not None and size % f:
                raise ValueError(
                    f"ConvEncoder input {name} {size} is not divisible by the downsample "
                    f"factor {f} (channel_multipliers={self.channel_multipliers})."
                )
        shape = tuple(input_shape[:-1]) + (self.base_channels,)
        self.conv_in = keras.layers.Conv2D(
            self.base_channels, 3, padding="same", dtype=self.dtype_policy, name="conv_in"
        )
        self.conv_in.build(input_shape)
        self.res_blocks = []
        self.downsamples = []
        last = len(self.channel_multipliers) - 1
        for level, multiplier in enumerate(self.channel_multipliers):
            channels = self.base_channels * multiplier
            for j in range(self.num_res_blocks):
                block = ResidualConvBlock(
                    channels, num_groups=self.num_groups, norm_epsilon=self.norm_epsilon,
                    dtype=self.dtype_policy, name=f"res_block_{level}_{j}",
                )
                block.build(shape)
                shape = block.compute_output_shape(shape)
                self.res_blocks.append(block)
            if level != last:
                down = keras.layers.Conv2D(
                    shape[-1], 3, strides=2, padding="same", dtype=self.dtype_policy,
                    name=f"downsample_{level}",
                )
                down.build(shape)
                shape = down.compute_output_shape(shape)
                self.downsamples.append(down)
        # Group norm statistics are numerics-sensitive: computed in float32 under any policy.
        self.norm_out = keras.layers.GroupNormalization(
            groups=self.num_groups, epsilon=self.norm_epsilon, dtype="float32", name="norm_out"
        )
        self.norm_out.build(shape)
        self.conv_out = keras.layers.Conv2D(
            self.code_dim, 3, padding="same", dtype=self.dtype_policy, name="conv_out"
        )
        self.conv_out.build(shape)
        # tf.train.Checkpoint does not follow Keras-tracked lists: keep each
        # listed layer as a private attribute too (Keras files use the lists).
        for name in ("res_blocks", "downsamples"):
            for i, layer in enumerate(getattr(self, name)):
                setattr(self, f"_{name}_{i}", layer)

    def call(self, inputs):
        x = self.conv_in(inputs)
        blocks = iter(self.res_blocks)
        for level in range(len(self.channel_multipliers)):
            for _ in range(self.num_res_blocks):
                x = next(blocks)(x)
            if level < len(self.downsamples):
                x = self.downsamples[level](x)
        x = ops.silu(ops.cast(self.norm_out(x), self.compute_dtype))
        return self.conv_out(x)

    def compute_output_shape(self, input_shape):
        f = self.downsample_factor
        size = [None if s is None else s // f for s in input_shape[1:3]]
        return (input_shape[0], size[0], size[1], self.code_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            base_channels=self.base_channels,
            channel_multipliers=list(self.channel_multipliers),
            num_res_blocks=self.num_res_blocks,
            code_dim=self.code_dim,
            num_groups=self.num_groups,
            norm_epsilon=self.norm_epsilon,
        )
        return config
