"""Multi-head attention over image grids: local 1D, local 2D and global."""

import keras
from keras import ops

from t2t_image.layers import initializers
from t2t_image.ops.dot_product_attention import dot_product_attention
from t2t_image.ops.local_attention_1d import masked_local_attention_1d
from t2t_image.ops.local_attention_2d import local_attention_2d
from t2t_image.ops.local_attention_2d import masked_local_attention_2d

ATTENTION_TYPES = ("local_1d", "local_2d", "global")


def check_attention_settings(attention_type, masked, block_length, query_shape,
                             memory_flange):
    """Raises ValueError for an attention setting the ops cannot serve."""
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(
            f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}."
        )
    if attention_type == "local_1d":
        if not masked:
            raise ValueError("attention_type='local_1d' is only available masked "
                             "(masked=True), got masked=False.")
        if not isinstance(block_length, int) or block_length <= 0:
            raise ValueError(f"block_length must be a positive int, got {block_length!r}.")
    if attention_type == "local_2d":
        if len(query_shape) != 2 or min(query_shape) <= 0:
            raise ValueError(
                f"query_shape must be two positive ints, got {tuple(query_shape)}."
            )
        if len(memory_flange) != 2 or min(memory_flange) < 0:
            raise ValueError(
                f"memory_flange must be two non-negative ints, got {tuple(memory_flange)}."
            )


@keras.saving.register_keras_serializable(package="t2t_image")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with the Image Transformer's local patterns.

    Queries, keys and values are projections without bias to
    ``key_channels`` / ``value_channels`` (0 means ``hidden_size``), split
    into ``num_heads`` heads; queries are scaled by depth_per_head**-0.5; the
    heads' outputs are concatenated and projected back to ``hidden_size``
    without bias (T2T's ``multihead_attention``). ``attention_type``:

    - ``"local_1d"``: the grid is flattened in raster order and split into
      query blocks of ``block_length``; each block attends to the previous
      block and causally to itself (Section 3.2, "1D local attention").
    - ``"local_2d"``: rectangular query blocks of ``query_shape`` with a memory
      of ``memory_flange`` rows above and columns left/right
      (Section 3.2, "2D local attention"); masked in block-raster order.
    - ``"global"``: full attention over the flattened grid (causal when
      ``masked``), and the encoder-decoder attention when ``memory`` is given.

    Args:
        hidden_size: int, model depth (the output depth).
        num_heads: int, number of heads; must divide the key and value channels.
        attention_type: "local_1d", "local_2d" or "global".
        masked: bool, causal (decoder) masking; False for the encoder,
            encoder-decoder attention and unmasked 2D local attention.
        block_length: int, query block length for "local_1d".
        query_shape: (rows, cols) query block for "local_2d".
        memory_flange: (rows, cols) memory flange for "local_2d".
        key_channels: int, total query/key depth (0: hidden_size).
        value_channels: int, total value depth (0: hidden_size).
        attention_dropout: float, dropout on the attention weights; applied in
            global attention only, as in T2T (its local attention uses none).
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `[batch, rows, cols, depth]`.
        memory: optional float tensor `[batch, ..., depth_m]` to attend to
            (encoder-decoder attention, attention_type "global" only).
        training: bool, whether dropout is active.

    Returns:
        Float tensor `[batch, rows, cols, hidden_size]`.

    Example:
    >>> att = MultiHeadAttention(16, 2, attention_type="local_1d", block_length=8)
    >>> att(np.zeros((1, 4, 12, 16), "float32")).shape
    (1, 4, 12, 16)
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        attention_type="local_1d",
        masked=True,
        block_length=256,
        query_shape=(8, 16),
        memory_flange=(8, 16),
        key_channels=0,
        value_channels=0,
        attention_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        query_shape = tuple(query_shape)
        memory_flange = tuple(memory_flange)
        check_attention_settings(attention_type, masked, block_length, query_shape,
                                 memory_flange)
        for name, channels in (("key_channels", key_channels or hidden_size),
                               ("value_channels", value_channels or hidden_size)):
            if channels % num_heads:
                raise ValueError(
                    f"{name} ({channels}) must be divisible by num_heads ({num_heads})."
                )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.attention_type = attention_type
        self.masked = masked
        self.block_length = block_length
        self.query_shape = query_shape
        self.memory_flange = memory_flange
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.attention_dropout = attention_dropout

    def build(self, inputs_shape, memory_shape=None):
        if memory_shape is not None and self.attention_type != "global":
            raise ValueError(
                "Attending to a memory needs attention_type='global', got "
                f"{self.attention_type!r}."
            )
        key_channels = self.key_channels or self.hidden_size
        value_channels = self.value_channels or self.hidden_size
        memory_shape = inputs_shape if memory_shape is None else memory_shape

        def dense(units, name):
            return keras.layers.Dense(
                units,
                use_bias=False,
                kernel_initializer=initializers.t2t_variance_scaling(),
                dtype=self.dtype_policy,
                name=name,
            )

        self.query_dense = dense(key_channels, "query")
        self.key_dense = dense(key_channels, "key")
        self.value_dense = dense(value_channels, "value")
        self.output_dense = dense(self.hidden_size, "output")
        self.query_dense.build(inputs_shape)
        self.key_dense.build(memory_shape)
        self.value_dense.build(memory_shape)
        self.output_dense.build(tuple(inputs_shape[:-1]) + (value_channels,))
        self.dropout = keras.layers.Dropout(
            self.attention_dropout, dtype=self.dtype_policy, name="dropout"
        )

    def _split_heads(self, x):
        # [batch, *positions, channels] -> [batch, heads, *positions, channels/heads]
        rank = len(x.shape)
        x = ops.reshape(x, (-1,) + tuple(x.shape[1:-1]) + (self.num_heads, x.shape[-1] // self.num_heads))
        return ops.moveaxis(x, rank - 1, 1)

    def _merge_heads(self, x):
        x = ops.moveaxis(x, 1, len(x.shape) - 2)
        return ops.reshape(x, (-1,) + tuple(x.shape[1:-2]) + (x.shape[-2] * x.shape[-1],))

    def call(self, inputs, memory=None, training=None):
        source = inputs if memory is None else memory
        q = self.query_dense(inputs)
        k = self.key_dense(source)
        v = self.value_dense(source)
        grid = tuple(inputs.shape[1:-1])
        if self.attention_type != "local_2d":
            # Flatten the grid in raster order: [batch, length, channels].
            q = ops.reshape(q, (-1, _prod(grid), q.shape[-1]))
            k = ops.reshape(k, (-1, _prod(tuple(k.shape[1:-1])), k.shape[-1]))
            v = ops.reshape(v, (-1, _prod(tuple(v.shape[1:-1])), v.shape[-1]))
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        q = q * ops.cast((q.shape[-1]) ** -0.5, q.dtype)
        if self.attention_type == "local_1d":
            out = masked_local_attention_1d(q, k, v, self.block_length)
        elif self.attention_type == "local_2d":
            attend = masked_local_attention_2d if self.masked else local_attention_2d
            out = attend(q, k, v, self.query_shape, self.memory_flange)
        else:
            dropout = None
            if training and self.attention_dropout > 0:
                dropout = lambda w: self.dropout(w, training=training)  # noqa: E731
            out = dot_product_attention(
                q, k, v, causal=self.masked and memory is None, weights_dropout=dropout
            )
        out = self._merge_heads(out)
        out = ops.reshape(out, (-1,) + grid + (out.shape[-1],))
        return self.output_dense(out)

    def compute_output_shape(self, inputs_shape, memory_shape=None):
        return tuple(inputs_shape[:-1]) + (self.hidden_size,)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            attention_type=self.attention_type,
            masked=self.masked,
            block_length=self.block_length,
            query_shape=list(self.query_shape),
            memory_flange=list(self.memory_flange),
            key_channels=self.key_channels,
            value_channels=self.value_channels,
            attention_dropout=self.attention_dropout,
        )
        return config


def _prod(values):
    result = 1
    for value in values:
        result *= value
    return result
