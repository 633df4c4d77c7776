"""The VQ autoencoder: the first stage of "Taming Transformers" (VQGAN)."""

import math

import keras
from keras import ops

from t2t_image.layers.conv_decoder import ConvDecoder
from t2t_image.layers.conv_encoder import ConvEncoder
from t2t_image.layers.conv_encoder import check_conv_stack_settings
from t2t_image.layers.vector_quantizer import CODEBOOK_UPDATES
from t2t_image.layers.vector_quantizer import VectorQuantizer

# Taming uses 32 groups; smaller stacks use the largest group count dividing
# base_channels (and so every level's channels).
_MAX_NORM_GROUPS = 32


@keras.saving.register_keras_serializable(package="t2t_image")
class VQAutoencoder(keras.Model):
    """Convolutional encoder, vector quantizer and decoder: images <-> code grids.

    ``targets`` (0..255) are scaled to [-1, 1] as ``x / 127.5 - 1``, encoded
    by a `ConvEncoder` to ``z`` `[b, h, w, code_dim]` with ``h = H / f``,
    ``w = W / f`` and ``f = 2 ** (len(channel_multipliers) - 1)``, quantized
    by a `VectorQuantizer` (straight-through) and decoded by a `ConvDecoder`.
    The reconstruction loss (L1, perceptual, GAN) is left to the trainer; the
    model returns the quantizer's losses and the batch statistics that
    ``update_codebook`` needs. Group norms use ``gcd(32, base_channels)``
    groups. Esser et al. 2021 ("Taming Transformers for High-Resolution Image
    Synthesis"), Sec. 3.1 (the VQGAN's E, Z, G and Eq. 4, without the
    discriminator and perceptual loss, and without attention blocks).

    Args:
        image_height: int, image rows H (divisible by f).
        image_width: int, image columns W (divisible by f).
        num_channels: int, channels per pixel.
        base_channels: int, channels of the first encoder level.
        channel_multipliers: sequence of ints, per-level channel multipliers.
        num_res_blocks: int, residual blocks per level.
        codebook_size: int K, codebook entries.
        code_dim: int n_z, codebook dimension.
        commitment_cost: float beta, weight of the commitment loss.
        codebook_update: "ema" or "loss" (see `VectorQuantizer`).
        ema_decay: float, decay of the codebook / usage moving averages.
        dead_code_threshold: float, usage EMA below which a code is restarted
            by ``update_codebook`` (0 disables).
        **kwargs: passed on to `keras.Model`.

    Call arguments:
        features: dict with ``targets`` integer `[batch, H, W, C]` in 0..255.
        training: bool (the model has no dropout; accepted for the trainer).

    Returns:
        A dict:
        - ``reconstruction``: float32 `[batch, H, W, C]` on the [-1, 1] scale
          (not clipped).
        - ``codes``: int32 `[batch, h, w]`.
        - ``codebook_loss``: float32 scalar (0 for "ema").
        - ``commitment_loss``: float32 scalar, already times ``commitment_cost``.
        - ``counts``: float32 `[K]`, batch code counts.
        - ``sums``: float32 `[K, code_dim]`, per-code sums of the latents.
        - ``latents``: float32 `[batch * h * w, code_dim]`, the encoder
          outputs (no gradient), restart candidates for ``update_codebook``.

    Example:
    >>> model = VQAutoencoder(image_height=8, image_width=8, base_channels=16,
    ...     channel_multipliers=(1, 2), codebook_size=32, code_dim=8)
    >>> out = model({"targets": np.zeros((2, 8, 8, 3), "uint8")})
    >>> out["reconstruction"].shape, out["codes"].shape
    ((2, 8, 8, 3), (2, 4, 4))
    """

    def __init__(
        self,
        image_height=32,
        image_width=32,
        num_channels=3,
        base_channels=64,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        codebook_size=512,
        code_dim=64,
        commitment_cost=0.25,
        codebook_update="ema",
        ema_decay=0.99,
        dead_code_threshold=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_height = image_height
        self.image_width = image_width
        self.num_channels = num_channels
        self.base_channels = base_channels
        self.channel_multipliers = tuple(channel_multipliers)
        self.num_res_blocks = num_res_blocks
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.commitment_cost = commitment_cost
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self._check_config()

    # ----------------------------------------------------------------- config
    @property
    def downsample_factor(self):
        """f = 2 ** (len(channel_multipliers) - 1): image pixels per code, per axis."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def code_grid_shape(self):
        """(h, w) = (image_height // f, image_width // f), the code grid."""
        f = self.downsample_factor
        return (self.image_height // f, self.image_width // f)

    @property
    def num_groups(self):
        """Group-norm groups of the encoder and decoder: gcd(32, base_channels)."""
        return math.gcd(_MAX_NORM_GROUPS, self.base_channels)

    def _check_config(self):
        for name in ("image_height", "image_width", "num_channels", "base_channels",
                     "codebook_size", "code_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        check_conv_stack_settings(self.base_channels, self.channel_multipliers,
                                  self.num_res_blocks, self.num_groups)
        f = self.downsample_factor
        if self.image_height % f or self.image_width % f:
            raise ValueError(
                f"image_height={self.image_height} and image_width={self.image_width} "
                f"must be divisible by the downsample factor {f} = 2 ** "
                f"(len(channel_multipliers) - 1) with channel_multipliers="
                f"{self.channel_multipliers}."
            )
        if not self.commitment_cost >= 0:
            raise ValueError(f"commitment_cost must be >= 0, got {self.commitment_cost!r}.")
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(
                f"codebook_update must be one of {CODEBOOK_UPDATES}, got "
                f"{self.codebook_update!r}."
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}.")
        if not self.dead_code_threshold >= 0:
            raise ValueError(
                f"dead_code_threshold must be >= 0, got {self.dead_code_threshold!r}."
            )

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        self._check_feature_shapes(input_shape)
        image = (None, self.image_height, self.image_width, self.num_channels)
        grid = (None,) + self.code_grid_shape + (self.code_dim,)
        stack = dict(
            base_channels=self.base_channels,
            channel_multipliers=self.channel_multipliers,
            num_res_blocks=self.num_res_blocks,
            num_groups=self.num_groups,
            dtype=self.dtype_policy,
        )
        self.encoder = ConvEncoder(code_dim=self.code_dim, name="encoder", **stack)
        self.encoder.build(image)
        self.quantizer = VectorQuantizer(
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            commitment_cost=self.commitment_cost,
            codebook_update=self.codebook_update,
            ema_decay=self.ema_decay,
            dead_code_threshold=self.dead_code_threshold,
            dtype=self.dtype_policy,
            name="quantizer",
        )
        self.quantizer.build(grid)
        self.decoder = ConvDecoder(output_channels=self.num_channels, name="decoder", **stack)
        self.decoder.build(grid)

    @property
    def last_layer_kernel(self):
        """The decoder's final convolution kernel (VQGAN's adaptive GAN weight, Eq. 7)."""
        self._build_if_needed()
        return self.decoder.conv_out.kernel

    # --------------------------------------------------------------- checking
    def _check_feature_shapes(self, shapes):
        expected = (self.image_height, self.image_width, self.num_channels)
        if not isinstance(shapes, dict) or "targets" not in shapes:
            raise ValueError(
                "VQAutoencoder takes a dict with 'targets' [batch, "
                f"{expected[0]}, {expected[1]}, {expected[2]}], got {shapes!r}."
            )
        self._check_targets_shape(tuple(shapes["targets"]))

    def _check_targets_shape(self, shape):
        expected = (self.image_height, self.image_width, self.num_channels)
        got = tuple(shape)[1:]
        if len(got) != 3 or any(g is not None and g != e for g, e in zip(got, expected)):
            raise ValueError(
                f"targets must have shape [batch, {expected[0]}, {expected[1]}, "
                f"{expected[2]}] (image_height={self.image_height}, image_width="
                f"{self.image_width}, num_channels={self.num_channels}), got {tuple(shape)}."
            )

    def _check_codes_shape(self, shape):
        # The decoder is convolutional: any grid decodes (larger ones come from
        # sliding-window sampling), the training grid is code_grid_shape.
        got = tuple(shape)[1:]
        if len(got) != 2 or any(g is not None and g < 1 for g in got):
            rows, cols = self.code_grid_shape
            raise ValueError(
                f"codes must have shape [batch, rows, cols] (e.g. [batch, {rows}, {cols}], the "
                f"code_grid_shape of image_height={self.image_height}, image_width="
                f"{self.image_width}, channel_multipliers={self.channel_multipliers}), got "
                f"{tuple(shape)}."
            )

    # ---------------------------------------------------------------- forward
    def _scale_images(self, targets):
        x = ops.cast(targets, "float32") / 127.5 - 1.0
        return ops.cast(x, self.compute_dtype)

    def call(self, features, training=None):
        self._check_feature_shapes({k: tuple(v.shape) for k, v in features.items()})
        z = self.encoder(self._scale_images(features["targets"]))
        vq = self.quantizer(z, training=training)
        reconstruction = self.decoder(vq["quantized"])
        return {
            "reconstruction": ops.cast(reconstruction, "float32"),
            "codes": vq["codes"],
            "codebook_loss": vq["codebook_loss"],
            "commitment_loss": self.commitment_cost * vq["commitment_loss"],
            "counts": vq["counts"],
            "sums": vq["sums"],
            "latents": ops.stop_gradient(
                ops.reshape(ops.cast(z, "float32"), (-1, self.code_dim))
            ),
        }

    def _build_if_needed(self):
        if not self.built:
            self.build({"targets": (None, self.image_height, self.image_width, self.num_channels)})

    def encode_to_codes(self, targets):
        """Code grid of integer images.

        Args:
            targets: integer `[batch, H, W, C]` in 0..255.

        Returns:
            int32 `[batch, h, w]`.
        """
        targets = ops.convert_to_tensor(targets)
        self._check_targets_shape(tuple(targets.shape))
        self._build_if_needed()
        z = self.encoder(self._scale_images(targets))
        return self.quantizer(z)["codes"]

    def decode_codes(self, codes):
        """Decodes a code grid to float32 images `[batch, H, W, C]` on the [-1, 1] scale.

        Args:
            codes: integer `[batch, h, w]` in 0..K-1; any grid size (the
                decoder is convolutional), ``code_grid_shape`` for training-size
                images.

        Returns:
            float32 `[batch, h * f, w * f, C]` (not clipped; f = downsample_factor).
        """
        codes = ops.convert_to_tensor(codes)
        self._check_codes_shape(tuple(codes.shape))
        self._build_if_needed()
        return ops.cast(self.decoder(self.quantizer.lookup(codes)), "float32")

    def images_from_codes(self, codes):
        """Decodes a code grid to int32 images `[batch, H, W, C]` in 0..255 (rounded, clipped)."""
        x = self.decode_codes(codes)
        return ops.cast(ops.clip(ops.round((x + 1.0) * 127.5), 0.0, 255.0), "int32")

    def update_codebook(self, outputs, seed):
        """Updates the codebook from ``call``'s outputs (see `VectorQuantizer.update_codebook`).

        Args:
            outputs: the dict returned by ``call`` (``counts`` and ``sums``
                summed over replicas; ``latents`` used as restart candidates).
            seed: int32/int64 tensor or tuple of shape [2], the restart seed.

        Returns:
            int32 scalar: the number of codes restarted.
        """
        return self.quantizer.update_codebook(
            outputs["counts"], outputs["sums"], outputs["latents"], seed
        )

    def compute_output_shape(self, input_shape):
        batch = input_shape["targets"][0]
        rows, cols = self.code_grid_shape
        return {
            "reconstruction": (batch, self.image_height, self.image_width, self.num_channels),
            "codes": (batch, rows, cols),
            "codebook_loss": (),
            "commitment_loss": (),
            "counts": (self.codebook_size,),
            "sums": (self.codebook_size, self.code_dim),
            "latents": (None, self.code_dim),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            image_height=self.image_height,
            image_width=self.image_width,
            num_channels=self.num_channels,
            base_channels=self.base_channels,
            channel_multipliers=list(self.channel_multipliers),
            num_res_blocks=self.num_res_blocks,
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            commitment_cost=self.commitment_cost,
            codebook_update=self.codebook_update,
            ema_decay=self.ema_decay,
            dead_code_threshold=self.dead_code_threshold,
        )
        return config
