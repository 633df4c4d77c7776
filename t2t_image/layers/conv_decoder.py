"""The convolutional decoder of the VQ autoencoder (VQGAN's first stage)."""

import keras
from keras import ops

from t2t_image.layers.conv_encoder import check_conv_stack_settings
from t2t_image.layers.residual_conv_block import ResidualConvBlock


@keras.saving.register_keras_serializable(package="t2t_image")
class ConvDecoder(keras.layers.Layer):
    """Convolutional decoder: latents `[b, h, w, n_z]` -> image `[b, h*f, w*f, C]`.

    Mirrors `ConvEncoder`: ``conv_in`` (3x3 to ``base_channels *
    channel_multipliers[-1]``), then for each level ``i`` from the last to the
    first: ``num_res_blocks`` `ResidualConvBlock`s with ``base_channels *
    channel_multipliers[i]`` channels followed, except after the first level,
    by a nearest-neighbour 2x upsample and a 3x3 convolution; finally group
    norm, swish and a 3x3 convolution (``conv_out``) to ``output_channels``.
    The output is linear (no tanh): the VQ autoencoder reads it as an image on
    the [-1, 1] scale. Esser et al. 2021 ("Taming Transformers"), Sec. 3.1,
    the decoder ``G`` (without attention blocks, and with ``num_res_blocks``
    blocks per level where Taming uses one more).

    Args:
        base_channels: int, channels of the first (full-resolution) level.
        channel_multipliers: sequence of ints, per-level channel multipliers
            in encoder order.
        num_res_blocks: int, residual blocks per level.
        output_channels: int, image channels.
        num_groups: int, group-norm groups; must divide every level's channels.
        norm_epsilon: float, group-norm epsilon.
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `[batch, height, width, code_dim]`.

    Returns:
        Float tensor `[batch, height * f, width * f, output_channels]` with
        ``f = 2 ** (len(channel_multipliers) - 1)``.

    Example:
    >>> decoder = ConvDecoder(base_channels=16, channel_multipliers=(1, 2),
    ...     num_res_blocks=1, output_channels=3, num_groups=8)
    >>> decoder(np.zeros((2, 4, 4, 8), "float32")).shape
    (2, 8, 8, 3)
    """

    def __init__(
        self,
        base_channels=64,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        output_channels=3,
        num_groups=32,
        norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.base_channels = base_channels
        self.channel_multipliers = check_conv_stack_settings(
            base_channels, channel_multipliers, num_res_blocks, num_groups
        )
        if not isinstance(output_channels, int) or output_channels <= 0:
            raise ValueError(f"output_channels must be a positive int, got {output_channels!r}.")
        self.num_res_blocks = num_res_blocks
        self.output_channels = output_channels
        self.num_groups = num_groups
        self.norm_epsilon = norm_epsilon

    @property
    def upsample_factor(self):
        """Spatial enlargement factor f = 2 ** (number of levels - 1)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    def build(self, input_shape):
        channels = self.base_channels * self.channel_multipliers[-1]
        self.conv_in = keras.layers.Conv2D(
            channels, 3, padding="same", dtype=self.dtype_policy, name="conv_in"
        )
        self.conv_in.build(input_shape)
        shape = self.conv_in.compute_output_shape(input_shape)
        self.res_blocks = []
        self.upsample_convs = []
        for level in reversed(range(len(self.channel_multipliers))):
            channels = self.base_channels * self.channel_multipliers[level]
            for j in range(self.num_res_blocks):
                block = ResidualConvBlock(
                    channels, num_groups=self.num_groups, norm_epsilon=self.norm_epsilon,
                    dtype=self.dtype_policy, name=f"res_block_{level}_{j}",
                )
                block.build(shape)
                shape = block.compute_output_shape(shape)
                self.res_blocks.append(block)
            if level != 0:
                shape = (shape[0],) + tuple(
                    None if s is None else 2 * s for s in shape[1:3]) + (shape[3],)
                conv = keras.layers.Conv2D(
                    shape[-1], 3, padding="same", dtype=self.dtype_policy,
                    name=f"upsample_{level}",
                )
                conv.build(shape)
                self.upsample_convs.append(conv)
        # Group norm statistics are numerics-sensitive: computed in float32 under any policy.
        self.norm_out = keras.layers.GroupNormalization(
            groups=self.num_groups, epsilon=self.norm_epsilon, dtype="float32", name="norm_out"
        )
        self.norm_out.build(shape)
        self.conv_out = keras.layers.Conv2D(
            self.output_channels, 3, padding="same", dtype=self.dtype_policy, name="conv_out"
        )
        self.conv_out.build(shape)
        # tf.train.Checkpoint does not follow Keras-tracked lists: keep each
        # listed layer as a private attribute too (Keras files use the lists).
        for name in ("res_blocks", "upsample_convs"):
            for i, layer in enumerate(getattr(self, name)):
                setattr(self, f"_{name}_{i}", layer)

    def call(self, inputs):
        x = self.conv_in(inputs)
        blocks = iter(self.res_blocks)
        upsample_convs = iter(self.upsample_convs)
        for level in reversed(range(len(self.channel_multipliers))):
            for _ in range(self.num_res_blocks):
                x = next(blocks)(x)
            if level != 0:
                # Nearest-neighbour 2x upsampling.
                x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
                x = next(upsample_convs)(x)
        x = ops.silu(ops.cast(self.norm_out(x), self.compute_dtype))
        return self.conv_out(x)

    def compute_output_shape(self, input_shape):
        f = self.upsample_factor
        size = [None if s is None else s * f for s in input_shape[1:3]]
        return (input_shape[0], size[0], size[1], self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            base_channels=self.base_channels,
            channel_multipliers=list(self.channel_multipliers),
            num_res_blocks=self.num_res_blocks,
            output_channels=self.output_channels,
            num_groups=self.num_groups,
            norm_epsilon=self.norm_epsilon,
        )
        return config
