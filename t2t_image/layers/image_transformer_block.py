"""One Image Transformer layer: self-attention, optional encoder-decoder attention, FFN."""

import keras
from keras import ops

from t2t_image.layers import initializers
from t2t_image.layers.multi_head_attention import MultiHeadAttention

SEQUENCE_CHARS = "adn"


def check_sequence(name, sequence):
    """Validates a T2T layer pre/post-process sequence ("none" or letters a, d, n)."""
    if sequence == "none":
        return ""
    if not isinstance(sequence, str) or any(c not in SEQUENCE_CHARS for c in sequence):
        raise ValueError(
            f"{name} must be 'none' or a string of the letters 'a' (add), 'd' "
            f"(dropout), 'n' (layer norm), got {sequence!r}."
        )
    return sequence


@keras.saving.register_keras_serializable(package="t2t_image")
class ImageTransformerBlock(keras.layers.Layer):
    """One decoder (or encoder) layer of the Image Transformer.

    Sub-layers: masked local (or global) self-attention, then, with
    ``cross_attention``, unmasked attention to an encoder memory, then a
    position-wise feed-forward network Dense(filter_size, relu) ->
    Dense(hidden_size). Each sub-layer is wrapped as in T2T:
    ``y = post(pre(x) -> sublayer, x)`` where ``layer_preprocess_sequence`` and
    ``layer_postprocess_sequence`` are strings of 'a' (add the sub-layer
    input), 'd' (dropout with ``layer_prepostprocess_dropout``) and 'n' (layer
    norm, epsilon ``norm_epsilon``, computed in float32); "none" is empty. The
    paper's default is pre "none" / post "dan"; pre "n" / post "da" is the
    pre-norm variant (the model then adds a final norm). Image Transformer,
    Section 3.1 (Figure 1) and Section 3.2.

    Args:
        hidden_size: int, model depth d.
        filter_size: int, FFN hidden depth.
        num_heads: int, attention heads.
        attention_type: "local_1d", "local_2d" or "global" (self-attention).
        masked: bool, causal self-attention (decoder) or not (encoder).
        cross_attention: bool, add an encoder-decoder attention sub-layer.
        block_length: int, "local_1d" query block length.
        query_shape: (rows, cols), "local_2d" query block.
        memory_flange: (rows, cols), "local_2d" memory flange.
        key_channels: int, total key depth (0: hidden_size).
        value_channels: int, total value depth (0: hidden_size).
        layer_preprocess_sequence: str, e.g. "none" or "n".
        layer_postprocess_sequence: str, e.g. "dan" or "da".
        layer_prepostprocess_dropout: float, dropout of the 'd' steps.
        relu_dropout: float, dropout after the FFN's ReLU.
        attention_dropout: float, dropout on attention weights (global only).
        norm_epsilon: float, layer-norm epsilon (T2T: 1e-6).
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `[batch, rows, cols, hidden_size]`.
        memory: encoder output `[batch, length, hidden_size]`, required when
            ``cross_attention`` is True.
        training: bool, whether dropout is active.

    Returns:
        Float tensor of the same shape as ``inputs``.

    Incremental decoding: ``init_cache(batch_size, memory)`` and
    ``call_step(inputs, cache, position)`` compute the block for one new
    position with cached attention keys/values (see ``call_step``).

    Example:
    >>> block = ImageTransformerBlock(16, 32, 2, attention_type="local_1d",
    ...                               block_length=8)
    >>> block(np.zeros((1, 4, 12, 16), "float32")).shape
    (1, 4, 12, 16)
    """

    def __init__(
        self,
        hidden_size,
        filter_size,
        num_heads,
        attention_type="local_1d",
        masked=True,
        cross_attention=False,
        block_length=256,
        query_shape=(8, 16),
        memory_flange=(8, 16),
        key_channels=0,
        value_channels=0,
        layer_preprocess_sequence="none",
        layer_postprocess_sequence="dan",
        layer_prepostprocess_dropout=0.1,
        relu_dropout=0.0,
        attention_dropout=0.0,
        norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._pre = check_sequence("layer_preprocess_sequence", layer_preprocess_sequence)
        self._post = check_sequence("layer_postprocess_sequence", layer_postprocess_sequence)
        if "a" in self._pre:
            raise ValueError(
                "layer_preprocess_sequence cannot add the residual ('a'), got "
                f"{layer_preprocess_sequence!r}."
            )
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})."
            )
        self.hidden_size = hidden_size
        self.filter_size = filter_size
        self.num_heads = num_heads
        self.attention_type = attention_type
        self.masked = masked
        self.cross_attention = cross_attention
        self.block_length = block_length
        self.query_shape = tuple(query_shape)
        self.memory_flange = tuple(memory_flange)
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.layer_preprocess_sequence = layer_preprocess_sequence
        self.layer_postprocess_sequence = layer_postprocess_sequence
        self.layer_prepostprocess_dropout = layer_prepostprocess_dropout
        self.relu_dropout = relu_dropout
        self.attention_dropout = attention_dropout
        self.norm_epsilon = norm_epsilon

    def _add_norms(self, prefix, sequence, shape):
        # Positions in self.norms of the layer norms of one pre/post sequence.
        slots = []
        for i, char in enumerate(sequence):
            if char != "n":
                continue
            # Layer norm is numerics-sensitive: computed in float32 under any policy.
            norm = keras.layers.LayerNormalization(
                epsilon=self.norm_epsilon, dtype="float32", name=f"{prefix}_norm_{i}"
            )
            norm.build(shape)
            slots.append(len(self.norms))
            self.norms.append(norm)
        return slots

    def build(self, inputs_shape, memory_shape=None):
        if self.cross_attention and memory_shape is None:
            raise ValueError("ImageTransformerBlock(cross_attention=True) needs a memory.")
        attention_args = dict(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            key_channels=self.key_channels,
            value_channels=self.value_channels,
            attention_dropout=self.attention_dropout,
            dtype=self.dtype_policy,
        )
        self.self_attention = MultiHeadAttention(
            attention_type=self.attention_type,
            masked=self.masked,
            block_length=self.block_length,
            query_shape=self.query_shape,
            memory_flange=self.memory_flange,
            name="self_attention",
            **attention_args,
        )
        self.self_attention.build(inputs_shape)
        sublayers = ["self_attention"]
        if self.cross_attention:
            self.encdec_attention = MultiHeadAttention(
                attention_type="global", masked=False, name="encdec_attention",
                **attention_args,
            )
            self.encdec_attention.build(inputs_shape, memory_shape)
            sublayers.append("encdec_attention")
        sublayers.append("ffn")
        init = initializers.t2t_variance_scaling()
        self.ffn_hidden = keras.layers.Dense(
            self.filter_size, activation="relu", kernel_initializer=init,
            dtype=self.dtype_policy, name="ffn_hidden",
        )
        self.ffn_output = keras.layers.Dense(
            self.hidden_size, kernel_initializer=init, dtype=self.dtype_policy,
            name="ffn_output",
        )
        self.ffn_hidden.build(inputs_shape)
        self.ffn_output.build(tuple(inputs_shape[:-1]) + (self.filter_size,))
        self.relu_dropout_layer = keras.layers.Dropout(
            self.relu_dropout, dtype=self.dtype_policy, name="relu_dropout"
        )
        self.prepost_dropout = keras.layers.Dropout(
            self.layer_prepostprocess_dropout, dtype=self.dtype_policy, name="prepost_dropout"
        )
        self.norms = []
        self._norm_slots = {}
        for name in sublayers:
            self._norm_slots[name] = (
                self._add_norms(f"{name}_pre", self._pre, inputs_shape),
                self._add_norms(f"{name}_post", self._post, inputs_shape),
            )
        # tf.train.Checkpoint does not follow Keras-tracked lists: without these
        # attributes a TF checkpoint of the block would miss its layer norms.
        # (Keras .keras/.weights.h5 files keep using the ``norms`` list.)
        for i, norm in enumerate(self.norms):
            setattr(self, f"_norm_{i}", norm)

    def _process(self, sequence, slots, x, residual, training):
        norms = iter(self.norms[i] for i in slots)
        for char in sequence:
            if char == "a":
                x = x + residual
            elif char == "d":
                x = self.prepost_dropout(x, training=training)
            else:
                x = ops.cast(next(norms)(x), self.compute_dtype)
        return x

    def _sublayer(self, name, fn, x, training):
        pre_slots, post_slots = self._norm_slots[name]
        y = fn(self._process(self._pre, pre_slots, x, None, training))
        return self._process(self._post, post_slots, y, x, training)

    def call(self, inputs, memory=None, training=None):
        x = self._sublayer(
            "self_attention",
            lambda y: self.self_attention(y, training=training),
            inputs,
            training,
        )
        if self.cross_attention:
            x = self._sublayer(
                "encdec_attention",
                lambda y: self.encdec_attention(y, memory, training=training),
                x,
                training,
            )
        return self._sublayer(
            "ffn",
            lambda y: self.ffn_output(
                self.relu_dropout_layer(self.ffn_hidden(y), training=training)
            ),
            x,
            training,
        )

    # ------------------------------------------------------ incremental decoding
    def init_cache(self, batch_size, memory=None):
        """Decoding cache of the block: empty self-attention keys/values and,
        with ``cross_attention``, the projected encoder ``memory`` (computed once).

        T2T ``fast_decode``'s per-layer cache; Parmar et al. 2018, Sec. 3.

        Args:
            batch_size: int or scalar int tensor.
            memory: encoder output `[batch, length, hidden_size]`, required when
                ``cross_attention`` is True.

        Returns:
            dict ``{"self_attention": ..., ["encdec_attention": ...]}`` of tensors.
        """
        cache = {"self_attention": self.self_attention.init_cache(batch_size)}
        if self.cross_attention:
            if memory is None:
                raise ValueError("ImageTransformerBlock(cross_attention=True) needs a memory.")
            cache["encdec_attention"] = self.encdec_attention.memory_cache(memory)
        return cache

    def refresh_cache(self, cache, position):
        """``MultiHeadAttention.refresh_cache`` of the self-attention's cache."""
        return dict(cache, self_attention=self.self_attention.refresh_cache(
            cache["self_attention"], position))

    def call_step(self, inputs, cache, position, window_ready=False):
        """The block's output at one new position (incremental decoding).

        Same sub-layers and pre/post-processing as ``call`` (inference: no
        dropout), with ``MultiHeadAttention.call_step`` for the attentions.
        T2T ``transformer_decoder`` with a decoding cache (``fast_decode``);
        Parmar et al. 2018, Sec. 3.

        Args:
            inputs: float tensor `[batch, hidden_size]`, the position's input.
            cache: dict from ``init_cache`` (or a previous ``call_step``).
            position: scalar int32 tensor, raster index of the position on the grid.
            window_ready: bool (static), see ``MultiHeadAttention.call_step``.

        Returns:
            ``(outputs, cache)``: float `[batch, hidden_size]` and the updated cache.
        """
        new_cache = dict(cache)

        def self_attention(y):
            out, new_cache["self_attention"] = self.self_attention.call_step(
                y, cache["self_attention"], position, window_ready=window_ready
            )
            return out

        x = self._sublayer("self_attention", self_attention, inputs, False)
        if self.cross_attention:
            x = self._sublayer(
                "encdec_attention",
                lambda y: self.encdec_attention.call_step(y, cache["encdec_attention"])[0],
                x,
                False,
            )
        x = self._sublayer("ffn", lambda y: self.ffn_output(self.ffn_hidden(y)), x, False)
        return x, new_cache

    def prefill_cache(self, inputs, cache, position, outputs=True):
        """The block's decoding cache (and outputs) from one pass over a known grid.

        ``MultiHeadAttention.prefill_cache`` of the self-attention's input;
        with ``outputs`` also the block's full-grid output (inference, as
        ``call``), the next block's input. Decoder-only blocks (no
        ``cross_attention``). Not in T2T (used by cached sliding-window
        sampling).

        Args:
            inputs: float tensor `[batch, rows, cols, hidden_size]`.
            cache: dict from ``init_cache``.
            position: scalar int32 tensor, the next position ``call_step`` decodes.
            outputs: bool (static); False skips everything after the projections.

        Returns:
            ``(outputs or None, cache)``.
        """
        if self.cross_attention:
            raise ValueError("prefill_cache is for decoder-only blocks (cross_attention=False).")
        new_cache = dict(cache)
        pre_slots, _ = self._norm_slots["self_attention"]

        def self_attention(y):
            new_cache["self_attention"] = self.self_attention.prefill_cache(y, position)
            return self.self_attention(y, training=False)

        if not outputs:
            y = self._process(self._pre, pre_slots, inputs, None, False)
            new_cache["self_attention"] = self.self_attention.prefill_cache(y, position)
            return None, new_cache
        x = self._sublayer("self_attention", self_attention, inputs, False)
        x = self._sublayer("ffn", lambda y: self.ffn_output(self.ffn_hidden(y)), x, False)
        return x, new_cache

    def compute_output_shape(self, inputs_shape, memory_shape=None):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            filter_size=self.filter_size,
            num_heads=self.num_heads,
            attention_type=self.attention_type,
            masked=self.masked,
            cross_attention=self.cross_attention,
            block_length=self.block_length,
            query_shape=list(self.query_shape),
            memory_flange=list(self.memory_flange),
            key_channels=self.key_channels,
            value_channels=self.value_channels,
            layer_preprocess_sequence=self.layer_preprocess_sequence,
            layer_postprocess_sequence=self.layer_postprocess_sequence,
            layer_prepostprocess_dropout=self.layer_prepostprocess_dropout,
            relu_dropout=self.relu_dropout,
            attention_dropout=self.attention_dropout,
            norm_epsilon=self.norm_epsilon,
        )
        return config
