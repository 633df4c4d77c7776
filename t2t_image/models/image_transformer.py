"""The decoder-only Image Transformer (Parmar et al., ICML 2018)."""

import math

import keras
import numpy as np
from keras import ops

from t2t_image.layers import initializers
from t2t_image.layers.image_transformer_block import ImageTransformerBlock
from t2t_image.layers.image_transformer_block import check_sequence
from t2t_image.layers.multi_head_attention import check_attention_settings
from t2t_image.layers.ordinal_pixel_embedding import OrdinalPixelEmbedding
from t2t_image.layers.pixel_embedding import PixelEmbedding
from t2t_image.layers.pixel_embedding import check_vocab_size
from t2t_image.layers.position_signal import PositionSignal
from t2t_image.ops.categorical import categorical_log_prob
from t2t_image.ops.dmol import discretized_mix_logistic_loss
from t2t_image.ops.local_attention_2d import block_raster_order
from t2t_image.ops.local_attention_2d import right_shift_block_raster
from t2t_image.ops.local_attention_2d import right_shift_blockwise

LIKELIHOODS = ("cat", "dmol")
BLOCK_SHIFTS = ("blockwise", "block_raster")


def nats_to_bits_per_dim(nats, num_dims):
    """Converts a negative log-likelihood in nats to bits per dimension."""
    return nats / (num_dims * math.log(2.0))


@keras.saving.register_keras_serializable(package="t2t_image")
class ImageTransformer(keras.Model):
    """The decoder-only Image Transformer: p(image) as a product of sub-pixel terms.

    The image is read as a sequence: with ``likelihood="cat"`` of sub-pixels
    (a `[height, channels * width]` grid, channel embeddings interleaved along
    the width) each with a ``vocab_size``-way softmax (256 intensities; or
    ``vocab_size=K`` for a prior over a grid of VQ codes in 0..K-1, the
    second stage of Esser et al. 2021, "Taming Transformers", Sec. 3.2, with
    ``num_channels=1``); with ``likelihood="dmol"`` of
    pixels, each with a discretized mixture of ``num_mixtures`` logistics over
    its three channels. The input is shifted right by one position (for
    ``local_2d``, T2T shifts inside each query block: the first element of
    every block gets zeros and the last element of a block is seen only as a
    key of later blocks' flanges; ``block_shift="block_raster"`` shifts along
    the whole block-raster generation order instead), position signals and
    the class embedding are added, and ``num_decoder_layers`` blocks of
    masked local self-attention + FFN follow. Image Transformer, Sections 3
    and 4 (Figure 1; Table 4 / Section 5.1 for unconditional and Section 5.2
    for class-conditional generation).

    Args:
        image_height: int, image rows.
        image_width: int, image columns.
        num_channels: int, channels per pixel (3; "dmol" needs 3).
        hidden_size: int, model depth d.
        filter_size: int, FFN hidden depth.
        num_heads: int, attention heads.
        num_decoder_layers: int, number of decoder blocks.
        dec_attention_type: "local_1d", "local_2d" or "global".
        block_length: int, "local_1d" query block length (in positions).
        query_shape: (rows, cols), "local_2d" query block on the position grid.
        memory_flange: (rows, cols), "local_2d" memory flange.
        key_channels: int, total attention key depth (0: hidden_size).
        value_channels: int, total attention value depth (0: hidden_size).
        likelihood: "cat" or "dmol".
        vocab_size: int >= 2, values per sub-pixel of a "cat" model: rows per
            channel of the embedding table and logits of the output layer
            (256 for 8-bit images, the codebook size K for a code prior);
            "dmol" models 8-bit intensities and needs 256.
        num_mixtures: int, logistic mixture components for "dmol".
        pos: "timing" (sinusoids) or "emb" (learned row/column tables).
        num_classes: int or None; when set, a class embedding is added to
            every position and ``labels`` are required.
        layer_preprocess_sequence: str, T2T pre-process sequence ("none", "n").
        layer_postprocess_sequence: str, T2T post-process sequence ("dan", "da").
        layer_prepostprocess_dropout: float.
        relu_dropout: float.
        attention_dropout: float (global attention only, as in T2T).
        block_shift: "blockwise" (T2T) or "block_raster", the input shift of
            the "local_2d" decoder.
        norm_epsilon: float, layer-norm epsilon (T2T: 1e-6).
        **kwargs: passed on to `keras.Model`.

    Call arguments:
        features: dict with ``targets`` integer `[batch, height, width,
            num_channels]` in ``0..vocab_size - 1`` and, for a conditional
            model, ``labels`` int `[batch]`.
        training: bool, whether dropout is active.

    Returns:
        float32 logits `[batch, height, width, channels, vocab_size]` ("cat") or
        mixture parameters `[batch, height, width, 10 * num_mixtures]` ("dmol").

    Incremental decoding (used by ``t2t_image.sampling.sample``):
    ``init_cache(batch_size, features)`` runs the encoder once and allocates
    the key/value caches; ``call_step(targets, cache, position)`` returns the
    outputs of one grid position given the positions generated before it.

    Example:
    >>> model = ImageTransformer(image_height=8, image_width=8, hidden_size=32,
    ...     filter_size=64, num_heads=2, num_decoder_layers=1, block_length=8)
    >>> model({"targets": np.zeros((2, 8, 8, 3), "uint8")}).shape
    (2, 8, 8, 3, 256)
    >>> prior = ImageTransformer(image_height=4, image_width=4, num_channels=1,
    ...     vocab_size=16, hidden_size=32, filter_size=64, num_heads=2,
    ...     num_decoder_layers=1, block_length=8)
    >>> prior({"targets": np.zeros((2, 4, 4, 1), "int32")}).shape
    (2, 4, 4, 1, 16)
    """

    def __init__(
        self,
        image_height=32,
        image_width=32,
        num_channels=3,
        hidden_size=512,
        filter_size=2048,
        num_heads=8,
        num_decoder_layers=12,
        dec_attention_type="local_1d",
        block_length=256,
        query_shape=(8, 16),
        memory_flange=(8, 16),
        key_channels=0,
        value_channels=0,
        likelihood="cat",
        vocab_size=256,
        num_mixtures=10,
        pos="timing",
        num_classes=None,
        layer_preprocess_sequence="none",
        layer_postprocess_sequence="dan",
        layer_prepostprocess_dropout=0.1,
        relu_dropout=0.0,
        attention_dropout=0.0,
        block_shift="blockwise",
        norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_height = image_height
        self.image_width = image_width
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.filter_size = filter_size
        self.num_heads = num_heads
        self.num_decoder_layers = num_decoder_layers
        self.dec_attention_type = dec_attention_type
        self.block_length = block_length
        self.query_shape = tuple(query_shape)
        self.memory_flange = tuple(memory_flange)
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.likelihood = likelihood
        self.vocab_size = vocab_size
        self.num_mixtures = num_mixtures
        self.pos = pos
        self.num_classes = num_classes
        self.layer_preprocess_sequence = layer_preprocess_sequence
        self.layer_postprocess_sequence = layer_postprocess_sequence
        self.layer_prepostprocess_dropout = layer_prepostprocess_dropout
        self.relu_dropout = relu_dropout
        self.attention_dropout = attention_dropout
        self.block_shift = block_shift
        self.norm_epsilon = norm_epsilon
        self._check_config()

    # ----------------------------------------------------------------- config
    @property
    def grid_shape(self):
        """(rows, cols) of the position grid: sub-pixels for "cat", pixels for "dmol"."""
        if self.likelihood == "cat":
            return (self.image_height, self.num_channels * self.image_width)
        return (self.image_height, self.image_width)

    def _check_config(self):
        def positive(name):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")

        for name in ("image_height", "image_width", "num_channels", "hidden_size",
                     "filter_size", "num_heads", "num_decoder_layers"):
            positive(name)
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}.")
        self.vocab_size = check_vocab_size(self.vocab_size)
        if self.likelihood == "dmol" and self.vocab_size != 256:
            raise ValueError(
                "likelihood='dmol' models 8-bit intensities and needs vocab_size=256, got "
                f"vocab_size={self.vocab_size}."
            )
        if self.likelihood == "dmol":
            positive("num_mixtures")
            if self.num_channels != 3:
                raise ValueError(
                    "likelihood='dmol' models exactly 3 channels (RGB), got "
                    f"num_channels={self.num_channels}."
                )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})."
            )
        check_attention_settings(self.dec_attention_type, True, self.block_length,
                                 self.query_shape, self.memory_flange)
        if self.dec_attention_type == "local_2d":
            rows, cols = self.grid_shape
            if self.query_shape[0] > rows or self.query_shape[1] > cols:
                raise ValueError(
                    f"query_shape {self.query_shape} is larger than the "
                    f"{rows}x{cols} position grid of a {self.image_height}x"
                    f"{self.image_width} image with likelihood={self.likelihood!r}."
                )
        if self.num_classes is not None:
            positive("num_classes")
        if self.pos not in ("timing", "emb"):
            raise ValueError(f"pos must be 'timing' or 'emb', got {self.pos!r}.")
        if self.block_shift not in BLOCK_SHIFTS:
            raise ValueError(f"block_shift must be one of {BLOCK_SHIFTS}, got {self.block_shift!r}.")
        check_sequence("layer_preprocess_sequence", self.layer_preprocess_sequence)
        check_sequence("layer_postprocess_sequence", self.layer_postprocess_sequence)

    # ------------------------------------------------------------------ build
    def _block_args(self):
        return dict(
            hidden_size=self.hidden_size,
            filter_size=self.filter_size,
            num_heads=self.num_heads,
            key_channels=self.key_channels,
            value_channels=self.value_channels,
            layer_preprocess_sequence=self.layer_preprocess_sequence,
            layer_postprocess_sequence=self.layer_postprocess_sequence,
            layer_prepostprocess_dropout=self.layer_prepostprocess_dropout,
            relu_dropout=self.relu_dropout,
            attention_dropout=self.attention_dropout,
            norm_epsilon=self.norm_epsilon,
            dtype=self.dtype_policy,
        )

    def _memory_shape(self, input_shape):
        """Shape of the encoder memory the decoder attends to (None: no encoder)."""
        return None

    def build(self, input_shape):
        self._check_feature_shapes(input_shape)
        rows, cols = self.grid_shape
        grid = (None, rows, cols, self.hidden_size)
        if self.likelihood == "cat":
            self.embedding = PixelEmbedding(
                self.hidden_size, self.num_channels, vocab_size=self.vocab_size,
                dtype=self.dtype_policy, name="pixel_embedding",
            )
        else:
            self.embedding = OrdinalPixelEmbedding(
                self.hidden_size, self.num_channels, dtype=self.dtype_policy,
                name="pixel_embedding",
            )
        self.embedding.build((None, self.image_height, self.image_width, self.num_channels))
        self.position_signal = PositionSignal(
            self.pos, max_rows=rows, max_cols=cols, dtype=self.dtype_policy,
            name="position_signal",
        )
        self.position_signal.build(grid)
        if self.num_classes is not None:
            # T2T's class_label_bottom (common_layers.embedding) gives the table no
            # initializer of its own: it gets the model default, variance scaling 0.2.
            self.class_embeddings = self.add_weight(
                name="class_embeddings",
                shape=(self.num_classes, self.hidden_size),
                initializer=initializers.t2t_variance_scaling(),
            )
        memory_shape = self._memory_shape(input_shape)
        self.decoder_blocks = []
        for i in range(self.num_decoder_layers):
            block = ImageTransformerBlock(
                attention_type=self.dec_attention_type,
                masked=True,
                cross_attention=memory_shape is not None,
                block_length=self.block_length,
                query_shape=self.query_shape,
                memory_flange=self.memory_flange,
                name=f"decoder_block_{i}",
                **self._block_args(),
            )
            block.build(grid, memory_shape)
            self.decoder_blocks.append(block)
        # T2T's transformer_decoder_layers drops out the decoder input first.
        self.input_dropout = keras.layers.Dropout(
            self.layer_prepostprocess_dropout, dtype=self.dtype_policy, name="input_dropout"
        )
        self.final_norm = None
        if "n" in check_sequence("pre", self.layer_preprocess_sequence):
            # Layer norm is numerics-sensitive: computed in float32 under any policy.
            self.final_norm = keras.layers.LayerNormalization(
                epsilon=self.norm_epsilon, dtype="float32", name="decoder_final_norm"
            )
            self.final_norm.build(grid)
        if self.likelihood == "cat":
            self.output_layer = keras.layers.Dense(
                self.vocab_size, use_bias=True, dtype=self.dtype_policy, name="output_logits",
                kernel_initializer=initializers.t2t_variance_scaling(),
            )
        else:
            self.output_layer = keras.layers.Dense(
                10 * self.num_mixtures, use_bias=False, dtype=self.dtype_policy,
                name="output_logits",
                kernel_initializer=initializers.t2t_variance_scaling(),
            )
        self.output_layer.build(grid)
        self._track_layer_lists()

    def _track_layer_lists(self):
        """Makes the layers held in lists (decoder and encoder blocks) checkpointable.

        ``tf.train.Checkpoint`` (the trainer's checkpoints) does not follow
        Keras-tracked lists, so each listed layer is also kept as a private
        attribute ``_{list name}_{index}``. Keras ``.keras`` / ``.weights.h5``
        files visit private attributes last and keep using the lists.
        """
        for name, value in list(vars(self).items()):
            if name.startswith("_") or not isinstance(value, (list, tuple)):
                continue
            if value and all(isinstance(v, keras.layers.Layer) for v in value):
                for i, layer in enumerate(value):
                    setattr(self, f"_{name}_{i}", layer)

    # --------------------------------------------------------------- checking
    def _check_feature_shapes(self, shapes):
        if not isinstance(shapes, dict) or "targets" not in shapes:
            raise ValueError(
                "ImageTransformer takes a dict with 'targets' "
                f"[batch, {self.image_height}, {self.image_width}, {self.num_channels}], "
                f"got {shapes!r}."
            )
        expected = (self.image_height, self.image_width, self.num_channels)
        got = tuple(shapes["targets"])[1:]
        if len(got) != 3 or any(g is not None and g != e for g, e in zip(got, expected)):
            raise ValueError(
                f"targets must have shape [batch, {expected[0]}, {expected[1]}, "
                f"{expected[2]}] (image_height={self.image_height}, image_width="
                f"{self.image_width}, num_channels={self.num_channels}), got "
                f"{tuple(shapes['targets'])}."
            )
        has_labels = shapes.get("labels") is not None
        if self.num_classes is None and has_labels:
            raise ValueError(
                "labels were passed to an unconditional model (num_classes=None); "
                "set num_classes to train a class-conditional model."
            )
        if self.num_classes is not None and not has_labels:
            raise ValueError(
                f"this model is class-conditional (num_classes={self.num_classes}) "
                "and needs features['labels'] of shape [batch]."
            )

    # ---------------------------------------------------------------- forward
    def shift_and_embed(self, targets, labels=None):
        """Decoder input: embedded targets shifted right, plus positions and class.

        Returns `[batch, rows, cols, hidden_size]` on the position grid.
        """
        x = self.embedding(targets)
        rows, cols = self.grid_shape
        if self.dec_attention_type == "local_2d":
            shift = (right_shift_blockwise if self.block_shift == "blockwise"
                     else right_shift_block_raster)
            x = shift(x, self.query_shape)
        else:
            x = ops.reshape(x, (-1, rows * cols, self.hidden_size))
            x = ops.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0)))
            x = ops.reshape(x, (-1, rows, cols, self.hidden_size))
        x = self.position_signal(x)
        if self.num_classes is not None:
            table = ops.cast(self.class_embeddings, x.dtype)
            emb = ops.take(table, ops.cast(labels, "int32"), axis=0)
            # T2T's class-label bottom multiplies the embedding by sqrt(d).
            x = x + emb[:, None, None, :] * (float(self.hidden_size) ** 0.5)
        return x

    def encode(self, features, training=None):
        """Encoder memory for the decoder's encoder-decoder attention (None here)."""
        return None

    def decode(self, x, memory=None, training=None):
        """Runs the decoder blocks and the output layer on the shifted input grid."""
        x = self.input_dropout(x, training=training)
        for block in self.decoder_blocks:
            x = block(x, memory, training=training)
        if self.final_norm is not None:
            x = ops.cast(self.final_norm(x), self.compute_dtype)
        logits = ops.cast(self.output_layer(x), "float32")
        if self.likelihood == "cat":
            logits = ops.reshape(
                logits,
                (-1, self.image_height, self.image_width, self.num_channels, self.vocab_size),
            )
        return logits

    def call(self, features, training=None):
        self._check_feature_shapes({k: tuple(v.shape) for k, v in features.items()})
        memory = self.encode(features, training=training)
        x = self.shift_and_embed(features["targets"], features.get("labels"))
        return self.decode(x, memory, training=training)

    # ---------------------------------------------------- incremental decoding
    def decoder_input_sources(self):
        """Which grid position's target each decoder input position holds.

        The decoder input at grid position ``p`` (raster index on
        ``grid_shape``) is the embedding of the target at ``sources[p]``, or
        zeros where ``sources[p] == -1``: the previous position in raster order
        ("local_1d", "global"); for "local_2d" the previous position in
        block-local raster order on the zero-padded grid (``block_shift=
        "blockwise"``, T2T ``right_shift_blockwise``: block starts and
        positions right after padding get zeros) or the previous position in
        block-raster generation order (``"block_raster"``).

        Returns:
            NumPy int64 array ``[rows * cols]``.
        """
        rows, cols = self.grid_shape
        sources = np.arange(rows * cols, dtype=np.int64) - 1
        if self.dec_attention_type != "local_2d":
            return sources
        order = block_raster_order(rows, cols, self.query_shape)
        if self.block_shift == "block_raster":
            sources[order[0]] = -1
            sources[order[1:]] = order[:-1]
            return sources
        qh, qw = self.query_shape
        r, c = np.divmod(np.arange(rows * cols), cols)
        local = (r % qh) * qw + c % qw  # block-local raster index on the padded block
        prev_r, prev_c = r - r % qh + (local - 1) // qw, c - c % qw + (local - 1) % qw
        real = (local > 0) & (prev_c < cols)
        return np.where(real, prev_r * cols + prev_c, -1)

    def init_cache(self, batch_size, features=None):
        """Starts incremental decoding: encoder output, empty caches, constants.

        Runs ``encode(features)`` once (for encoder-decoder subclasses) and
        projects its memory for every block, allocates the self-attention
        key/value caches, and precomputes the position signal of every grid
        position and the class embedding of every sample.

        T2T ``fast_decode``'s cache initialisation (Parmar et al. 2018, Sec. 3).

        Args:
            batch_size: int or scalar int tensor, the number of images.
            features: dict with the conditioning entries (``labels`` `[batch]`
                for class-conditional models, ``inputs`` for encoder-decoder
                models); ``targets`` is not needed.

        Returns:
            A dict of tensors for ``call_step``.
        """
        features = dict(features or {})
        if not self.built:
            raise ValueError("init_cache needs a built model: call it on a batch first.")
        if self.num_classes is not None and features.get("labels") is None:
            raise ValueError(
                f"this model is class-conditional (num_classes={self.num_classes}) "
                "and needs features['labels'] of shape [batch]."
            )
        if self.num_classes is None and features.get("labels") is not None:
            raise ValueError("labels were passed to an unconditional model (num_classes=None).")
        memory = self.encode(features, training=False)
        rows, cols = self.grid_shape
        signal = self.position_signal(
            ops.zeros((1, rows, cols, self.hidden_size), self.compute_dtype)
        )
        cache = {
            "position_signal": ops.reshape(signal, (rows * cols, self.hidden_size)),
            "blocks": [block.init_cache(batch_size, memory) for block in self.decoder_blocks],
        }
        if self.num_classes is not None:
            table = ops.cast(self.class_embeddings, self.compute_dtype)
            emb = ops.take(table, ops.cast(features["labels"], "int32"), axis=0)
            # As in shift_and_embed: T2T's class-label bottom multiplies by sqrt(d).
            cache["class_embedding"] = emb * (float(self.hidden_size) ** 0.5)
        return cache

    def _step_input(self, targets, position, cache):
        """Decoder input `[batch, d]` at ``position``, as ``shift_and_embed`` builds it."""
        rows, cols = self.grid_shape
        source = ops.take(ops.convert_to_tensor(self.decoder_input_sources().astype("int32")),
                          position, axis=0)
        has_source = source >= 0
        source = ops.maximum(source, 0)
        # The source's whole pixel is embedded; "cat" then keeps its channel.
        pixels_per_row = self.image_width
        if self.likelihood == "cat":
            pixel = (source // cols) * pixels_per_row + (source % cols) // self.num_channels
        else:
            pixel = source
        flat = ops.reshape(targets, (-1, self.image_height * self.image_width, self.num_channels))
        values = ops.take(flat, pixel, axis=1)[:, None, None, :]  # [batch, 1, 1, channels]
        emb = self.embedding(values)  # "cat": [b, 1, channels, d]; "dmol": [b, 1, 1, d]
        if self.likelihood == "cat":
            emb = ops.take(emb[:, 0], source % self.num_channels, axis=1)
        else:
            emb = emb[:, 0, 0]
        x = ops.where(has_source, emb, ops.zeros_like(emb))
        x = x + ops.take(cache["position_signal"], position, axis=0)[None, :]
        if self.num_classes is not None:
            x = x + cache["class_embedding"]
        return x

    def window_refresh_positions(self):
        """Grid positions where a local_2d decoder's window buffers must be refreshed.

        NumPy bool `[rows * cols]` over ``grid_shape``, True at the first
        generated position of each query block (``refresh_cache``), or None
        when the decoder self-attention is not local_2d (nothing to refresh).
        """
        if self.dec_attention_type != "local_2d":
            return None
        return self.decoder_blocks[0].self_attention._block_window()[2]

    def refresh_cache(self, cache, position):
        """``cache`` with every local_2d window buffer gathered for ``position``'s block.

        Decoding loops call it at the positions of ``window_refresh_positions``
        (and where they start), then ``call_step(..., window_ready=True)``
        until the next such position. Correct at any position. Not in T2T.

        Args:
            cache: dict from ``init_cache`` (or ``call_step``).
            position: scalar int32 tensor, raster index on ``grid_shape``.

        Returns:
            The updated cache.
        """
        return dict(cache, blocks=[block.refresh_cache(block_cache, position) for block, block_cache
                                   in zip(self.decoder_blocks, cache["blocks"])])

    def call_step(self, targets, cache, position, window_ready=False):
        """Model outputs at one grid position, decoding incrementally.

        Equals ``self(features)`` at ``position`` (within float rounding) when
        ``targets`` holds every position generated before ``position`` in the
        generation order (``t2t_image.sampling.generation_order``) and every
        earlier position was passed to ``call_step`` with the same cache; the
        other entries of ``targets`` are ignored. Inference only (no dropout).

        T2T ``fast_decode``'s ``symbols_to_logits_fn`` for one step, extended
        to local 2D attention and the DMOL likelihood (Parmar et al. 2018,
        Sec. 3.2).

        Args:
            targets: int tensor `[batch, height, width, channels]`, the image so far.
            position: scalar int32 tensor, raster index on ``grid_shape`` (a
                sub-pixel for "cat", a pixel for "dmol").
            cache: dict from ``init_cache`` or the previous ``call_step``.
            window_ready: bool (static); True when ``refresh_cache`` was called
                at this position's query block (local_2d decoders; see
                ``window_refresh_positions``): skips a per-step conditional.

        Returns:
            ``(outputs, cache)``: float32 logits `[batch, vocab_size]` of the sub-pixel
            ("cat") or mixture parameters `[batch, 10 * num_mixtures]` of the
            pixel ("dmol"), and the updated cache.
        """
        x = self._step_input(targets, position, cache)
        new_cache = dict(cache)
        new_cache["blocks"] = []
        for block, block_cache in zip(self.decoder_blocks, cache["blocks"]):
            x, block_cache = block.call_step(x, block_cache, position, window_ready)
            new_cache["blocks"].append(block_cache)
        if self.final_norm is not None:
            x = ops.cast(self.final_norm(x), self.compute_dtype)
        return ops.cast(self.output_layer(x), "float32"), new_cache

    def prefill_cache(self, features, cache, position):
        """Decoding caches of every block from one parallel pass over known targets.

        Replaces the self-attention caches of ``cache`` (from ``init_cache``)
        with those ``call_step`` would have built decoding the generation
        order up to (not including) grid position ``position`` of
        ``features["targets"]``; only those positions need to be known.
        One full-grid pass without the output layer (and without the last
        block's attention output and FFN). Used by cached sliding-window
        sampling when its window moves. Decoder-only models. Not in T2T.

        Args:
            features: dict with ``targets`` `[batch, height, width, channels]`
                and, for a class-conditional model, ``labels`` `[batch]`.
            cache: dict from ``init_cache`` (or ``call_step``).
            position: scalar int32 tensor, raster index on ``grid_shape`` of the
                next position ``call_step`` decodes.

        Returns:
            The updated cache.
        """
        x = self.shift_and_embed(features["targets"], features.get("labels"))
        new_cache = dict(cache)
        new_cache["blocks"] = []
        last = len(self.decoder_blocks) - 1
        for i, (block, block_cache) in enumerate(zip(self.decoder_blocks, cache["blocks"])):
            x, block_cache = block.prefill_cache(x, block_cache, position, outputs=i < last)
            new_cache["blocks"].append(block_cache)
        return new_cache

    # ------------------------------------------------------------ likelihoods
    def log_prob_from_logits(self, logits, targets):
        """Per-image log-likelihood in nats `[batch]` (float32) of integer targets."""
        if self.likelihood == "cat":
            # Log-probabilities are numerics-sensitive: categorical_log_prob is float32.
            lp = categorical_log_prob(logits, ops.cast(targets, "int32"))
            return ops.sum(ops.reshape(lp, (ops.shape(lp)[0], -1)), axis=-1)
        labels = ops.cast(targets, "float32") / 127.5 - 1.0
        # The DMOL loss is computed in float32 whatever the policy.
        nll = discretized_mix_logistic_loss(logits, labels)
        return -ops.sum(ops.reshape(nll, (ops.shape(nll)[0], -1)), axis=-1)

    def log_prob(self, features, training=False):
        """Per-image log-likelihood log p(targets | labels) in nats, `[batch]`."""
        return self.log_prob_from_logits(self(features, training=training), features["targets"])

    @property
    def num_dims(self):
        """Dimensions per image (sub-pixels): height * width * channels."""
        return self.image_height * self.image_width * self.num_channels

    def bits_per_dim(self, features, training=False):
        """Mean negative log-likelihood in bits per dimension over the batch."""
        nats = -ops.mean(self.log_prob(features, training=training))
        return nats_to_bits_per_dim(nats, self.num_dims)

    def compute_output_shape(self, input_shape):
        batch = input_shape["targets"][0]
        if self.likelihood == "cat":
            return (batch, self.image_height, self.image_width, self.num_channels,
                    self.vocab_size)
        return (batch, self.image_height, self.image_width, 10 * self.num_mixtures)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_height=self.image_height,
            image_width=self.image_width,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            filter_size=self.filter_size,
            num_heads=self.num_heads,
            num_decoder_layers=self.num_decoder_layers,
            dec_attention_type=self.dec_attention_type,
            block_length=self.block_length,
            query_shape=list(self.query_shape),
            memory_flange=list(self.memory_flange),
            key_channels=self.key_channels,
            value_channels=self.value_channels,
            likelihood=self.likelihood,
            vocab_size=self.vocab_size,
            num_mixtures=self.num_mixtures,
            pos=self.pos,
            num_classes=self.num_classes,
            layer_preprocess_sequence=self.layer_preprocess_sequence,
            layer_postprocess_sequence=self.layer_postprocess_sequence,
            layer_prepostprocess_dropout=self.layer_prepostprocess_dropout,
            relu_dropout=self.relu_dropout,
            attention_dropout=self.attention_dropout,
            block_shift=self.block_shift,
            norm_epsilon=self.norm_epsilon,
        )
        return config
