"""The encoder-decoder Image Transformer for super-resolution (Parmar et al. 2018, Sec. 5.3)."""

import keras
from keras import ops

from t2t_image.layers.image_transformer_block import ImageTransformerBlock
from t2t_image.layers.image_transformer_block import check_sequence
from t2t_image.layers.pixel_embedding import PixelEmbedding
from t2t_image.layers.position_signal import PositionSignal
from t2t_image.models.image_transformer import ImageTransformer


@keras.saving.register_keras_serializable(package="t2t_image")
class Img2ImgTransformer(ImageTransformer):
    """Conditional Image Transformer: p(high-res targets | low-res inputs).

    The encoder reads the low-resolution image through its own channel-specific
    embedding table (``input_embedding``, separate from the decoder's), laid out
    `[batch, input_height, num_channels * input_width, d]` like the decoder
    grid, adds the position signal of ``pos`` over that grid, applies dropout
    (``layer_prepostprocess_dropout``) and ``num_encoder_layers`` blocks of
    full, unmasked self-attention + FFN with the configured pre/post sequences,
    and ends with a layer norm when ``layer_preprocess_sequence`` contains "n".
    Its output, flattened to `input_height * num_channels * input_width`
    positions (192 for an 8x8 RGB input), is the memory that every decoder
    block attends to, unmasked, in an encoder-decoder attention sub-layer
    between its masked self-attention and its FFN. The decoder (shifted
    targets, local_1d / local_2d / global masked self-attention, categorical
    or DMOL output) is the one of `ImageTransformer`. No class conditioning.
    T2T's ``Img2imgTransformer`` (``prepare_encoder``,
    ``transformer_encoder_layers`` with global attention,
    ``transformer_decoder_layers`` with ``encdec_attention_1d``); Image
    Transformer, Section 5.3 (conditional image generation: super-resolution
    8x8 -> 32x32 on CelebA and CIFAR-10, Table 5) and Section 3.

    Args:
        input_height: int, rows of the low-resolution input.
        input_width: int, columns of the low-resolution input.
        num_encoder_layers: int, encoder blocks (the paper found 2-3x fewer
            encoder than decoder layers best; T2T's sets use 4 and 8).
        num_decoder_layers: int, decoder blocks.
        num_classes: must be None (super-resolution is not class-conditional).
        **kwargs: every other argument of `ImageTransformer` (``image_height``
            and ``image_width`` are the high-resolution target size, 32x32
            by default; ``vocab_size`` applies to the targets only: the
            low-resolution inputs are 8-bit images, embedded with 256 values
            per channel), and of `keras.Model`.

    Call arguments:
        features: dict with ``inputs`` integer `[batch, input_height,
            input_width, num_channels]` in 0..255 and ``targets`` integer
            `[batch, image_height, image_width, num_channels]` in
            ``0..vocab_size - 1``.
        training: bool, whether dropout is active.

    Returns:
        float32 logits `[batch, image_height, image_width, num_channels, vocab_size]`
        ("cat") or mixture parameters `[batch, image_height, image_width,
        10 * num_mixtures]` ("dmol").

    Example:
    >>> model = Img2ImgTransformer(input_height=8, input_width=8,
    ...     image_height=32, image_width=32, hidden_size=32, filter_size=64,
    ...     num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
    ...     block_length=32)
    >>> model({"inputs": np.zeros((2, 8, 8, 3), "uint8"),
    ...        "targets": np.zeros((2, 32, 32, 3), "uint8")}).shape
    (2, 32, 32, 3, 256)
    """

    def __init__(
        self,
        input_height=8,
        input_width=8,
        num_encoder_layers=4,
        num_decoder_layers=8,
        num_classes=None,
        **kwargs,
    ):
        if num_classes is not None:
            raise ValueError(
                "Img2ImgTransformer is conditioned on the low-resolution image, not on a "
                f"class: num_classes must be None, got num_classes={num_classes!r}."
            )
        super().__init__(num_decoder_layers=num_decoder_layers, num_classes=None, **kwargs)
        self.input_height = input_height
        self.input_width = input_width
        self.num_encoder_layers = num_encoder_layers
        for name in ("input_height", "input_width", "num_encoder_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")

    # ----------------------------------------------------------------- config
    @property
    def input_grid_shape(self):
        """(rows, cols) of the encoder grid: sub-pixels of the low-res input."""
        return (self.input_height, self.num_channels * self.input_width)

    @property
    def memory_length(self):
        """Number of encoder positions the decoder attends to (192 for 8x8x3)."""
        rows, cols = self.input_grid_shape
        return rows * cols

    def _memory_shape(self, input_shape):
        """Shape of the encoder memory: `[batch, memory_length, hidden_size]`."""
        return (None, self.memory_length, self.hidden_size)

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        self._check_feature_shapes(input_shape)
        rows, cols = self.input_grid_shape
        grid = (None, rows, cols, self.hidden_size)
        # The low-resolution inputs are 8-bit images whatever the targets' vocab_size.
        self.input_embedding = PixelEmbedding(
            self.hidden_size, self.num_channels, vocab_size=256, dtype=self.dtype_policy,
            name="input_embedding",
        )
        self.input_embedding.build(
            (None, self.input_height, self.input_width, self.num_channels)
        )
        self.input_position_signal = PositionSignal(
            self.pos, max_rows=rows, max_cols=cols, dtype=self.dtype_policy,
            name="input_position_signal",
        )
        self.input_position_signal.build(grid)
        # T2T's transformer_encoder_layers drops out its input.
        self.encoder_input_dropout = keras.layers.Dropout(
            self.layer_prepostprocess_dropout, dtype=self.dtype_policy,
            name="encoder_input_dropout",
        )
        self.encoder_blocks = []
        for i in range(self.num_encoder_layers):
            block = ImageTransformerBlock(
                attention_type="global",
                masked=False,
                cross_attention=False,
                name=f"encoder_block_{i}",
                **self._block_args(),
            )
            block.build(grid)
            self.encoder_blocks.append(block)
        self.encoder_final_norm = None
        if "n" in check_sequence("layer_preprocess_sequence", self.layer_preprocess_sequence):
            # Layer norm is numerics-sensitive: computed in float32 under any policy.
            self.encoder_final_norm = keras.layers.LayerNormalization(
                epsilon=self.norm_epsilon, dtype="float32", name="encoder_final_norm"
            )
            self.encoder_final_norm.build(grid)
        super().build(input_shape)

    # --------------------------------------------------------------- checking
    def _check_feature_shapes(self, shapes):
        if not isinstance(shapes, dict) or shapes.get("inputs") is None:
            raise ValueError(
                "Img2ImgTransformer takes a dict with 'inputs' [batch, "
                f"{self.input_height}, {self.input_width}, {self.num_channels}] and "
                f"'targets' [batch, {self.image_height}, {self.image_width}, "
                f"{self.num_channels}], got {shapes!r}."
            )
        expected = (self.input_height, self.input_width, self.num_channels)
        got = tuple(shapes["inputs"])[1:]
        if len(got) != 3 or any(g is not None and g != e for g, e in zip(got, expected)):
            raise ValueError(
                f"inputs must have shape [batch, {expected[0]}, {expected[1]}, "
                f"{expected[2]}] (input_height={self.input_height}, input_width="
                f"{self.input_width}, num_channels={self.num_channels}), got "
                f"{tuple(shapes['inputs'])}."
            )
        super()._check_feature_shapes(shapes)

    # ---------------------------------------------------------------- forward
    def encode(self, features, training=None):
        """Encoder memory `[batch, memory_length, hidden_size]` of ``features["inputs"]``.

        T2T's ``prepare_encoder`` + ``transformer_encoder_layers``
        (global unmasked self-attention); Image Transformer, Section 5.3.
        """
        x = self.input_embedding(features["inputs"])
        x = self.input_position_signal(x)
        x = self.encoder_input_dropout(x, training=training)
        for block in self.encoder_blocks:
            x = block(x, training=training)
        if self.encoder_final_norm is not None:
            x = ops.cast(self.encoder_final_norm(x), self.compute_dtype)
        return ops.reshape(x, (-1, self.memory_length, self.hidden_size))

    def get_config(self):
        config = super().get_config()
        config.update(
            input_height=self.input_height,
            input_width=self.input_width,
            num_encoder_layers=self.num_encoder_layers,
        )
        return config
