"""The PatchGAN discriminator of the VQGAN first stage."""

import keras
from keras import ops

NORMS = ("group", "none")


@keras.saving.register_keras_serializable(package="t2t_image")
class PatchDiscriminator(keras.Model):
    """PatchGAN discriminator: one real/fake logit per overlapping image patch.

    The convolutional discriminator of pix2pix (Isola et al. 2017, Sec. 3.2.2,
    "PatchGAN"; the ``NLayerDiscriminator`` of their code) that VQGAN trains
    against its autoencoder (Esser et al. 2021, Sec. 3.1, "patch-based
    discriminator D"). Layers, all 4x4 convolutions with "same" padding:

    1. conv(``base_channels``, stride 2) + LeakyReLU(0.2), no normalization;
    2. ``num_layers - 1`` times conv(stride 2) with ``base_channels *
       min(2**n, 8)`` channels (n = 1, 2, ...) + norm + LeakyReLU(0.2);
    3. conv(``base_channels * min(2**num_layers, 8)``, stride 1) + norm +
       LeakyReLU(0.2);
    4. conv(1, stride 1): the patch logits.

    The output grid is ``ceil(H / 2**num_layers) x ceil(W / 2**num_layers)``.
    (pix2pix pads every conv by 1 pixel, which shrinks the grid by one more
    pixel at each of the two stride-1 convs, e.g. 30x30 for 256x256 inputs;
    "same" padding keeps it ``H / 2**num_layers`` so small images work.)
    Kernels start from N(0, 0.02) and group-norm scales from N(1, 0.02), the
    pix2pix / VQGAN initialisation. Convolutions followed by a normalization
    have no bias (the norm's offset replaces it).

    Normalization: ``"group"`` (GroupNormalization with ``norm_groups``
    groups, statistics per image and computed in float32 by Keras) or
    ``"none"``. BatchNorm, which pix2pix and VQGAN use, is deliberately not
    offered: its statistics would be per replica under ``tf.distribute``
    (or need a cross-replica sync), its moving averages make train and eval
    outputs differ, and the discriminator sees real and fake batches in
    separate calls, so batch statistics would leak which batch is which.

    Args:
        base_channels: int, channels of the first conv (pix2pix: 64).
        num_layers: int >= 1, number of stride-2 convs (pix2pix / VQGAN: 3);
            the receptive field grows with it (70x70 pixels for 3).
        norm: "group" or "none".
        norm_groups: int, groups of the group norm; must divide
            ``2 * base_channels`` (then it divides every normalized width).
        **kwargs: passed on to `keras.Model`.

    Call arguments:
        images: float tensor `[batch, height, width, channels]` on the
            [-1, 1] scale (real images or reconstructions); height and width
            must be at least ``2**num_layers``.

    Returns:
        Float32 logits `[batch, ceil(height / 2**num_layers),
        ceil(width / 2**num_layers), 1]`.

    Example:
    >>> disc = PatchDiscriminator(base_channels=8, num_layers=2, norm_groups=4)
    >>> disc(np.zeros((2, 16, 16, 3), "float32")).shape
    (2, 4, 4, 1)
    """

    def __init__(self, base_channels=64, num_layers=3, norm="group", norm_groups=32, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(base_channels, int) or base_channels <= 0:
            raise ValueError(f"base_channels must be a positive int, got {base_channels!r}.")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}.")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
        if not isinstance(norm_groups, int) or norm_groups <= 0:
            raise ValueError(f"norm_groups must be a positive int, got {norm_groups!r}.")
        if norm == "group" and (2 * base_channels) % norm_groups:
            raise ValueError(
                f"norm_groups ({norm_groups}) must divide 2 * base_channels "
                f"({2 * base_channels}), the narrowest normalized layer, with norm='group'."
            )
        self.base_channels = base_channels
        self.num_layers = num_layers
        self.norm = norm
        self.norm_groups = norm_groups

    def _channels(self):
        # Output channels of every conv before the logits conv, pix2pix's nf_mult.
        return [self.base_channels * min(2**n, 8) for n in range(self.num_layers + 1)]

    def _check_shape(self, images_shape):
        shape = tuple(images_shape)
        if len(shape) != 4:
            raise ValueError(
                f"PatchDiscriminator takes images [batch, height, width, channels], "
                f"got shape {shape}."
            )
        least = 2**self.num_layers
        if any(d is not None and d < least for d in shape[1:3]):
            raise ValueError(
                f"PatchDiscriminator(num_layers={self.num_layers}) downsamples by "
                f"2**{self.num_layers} = {least}: images must be at least {least}x{least}, "
                f"got shape {shape}."
            )
        if shape[3] is None:
            raise ValueError(f"PatchDiscriminator needs a static channel count, got {shape}.")

    def build(self, images_shape):
        self._check_shape(images_shape)
        init = keras.initializers.RandomNormal(mean=0.0, stddev=0.02)
        normalized = self.norm != "none"
        self.convs = []
        self.norms = []
        shape = tuple(images_shape)
        for i, channels in enumerate(self._channels()):
            conv = keras.layers.Conv2D(
                channels, 4, strides=1 if i == self.num_layers else 2, padding="same",
                use_bias=not (normalized and i > 0), kernel_initializer=init,
                dtype=self.dtype_policy, name=f"conv_{i}",
            )
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            self.convs.append(conv)
            if normalized and i > 0:
                # GroupNormalization upcasts to float32 for its statistics by itself.
                norm = keras.layers.GroupNormalization(
                    groups=self.norm_groups, epsilon=1e-5,
                    gamma_initializer=keras.initializers.RandomNormal(mean=1.0, stddev=0.02),
                    dtype=self.dtype_policy, name=f"norm_{i}",
                )
                norm.build(shape)
                self.norms.append(norm)
        self.logits = keras.layers.Conv2D(
            1, 4, padding="same", kernel_initializer=init, dtype=self.dtype_policy,
            name="logits",
        )
        self.logits.build(shape)
        # tf.train.Checkpoint does not follow Keras-tracked lists: keep every
        # listed layer also as a private attribute (see ImageTransformer).
        for name in ("convs", "norms"):
            for i, layer in enumerate(getattr(self, name)):
                setattr(self, f"_{name}_{i}", layer)

    def call(self, images):
        self._check_shape(images.shape)
        x = ops.cast(images, self.compute_dtype)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms and i > 0:
                x = self.norms[i - 1](x)
            x = ops.leaky_relu(x, negative_slope=0.2)
        # Logits feed the GAN losses: returned in float32 whatever the dtype policy.
        return ops.cast(self.logits(x), "float32")

    def compute_output_shape(self, images_shape):
        factor = 2**self.num_layers
        rows, cols = (None if d is None else -(-d // factor) for d in images_shape[1:3])
        return (images_shape[0], rows, cols, 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            base_channels=self.base_channels,
            num_layers=self.num_layers,
            norm=self.norm,
            norm_groups=self.norm_groups,
        )
        return config
