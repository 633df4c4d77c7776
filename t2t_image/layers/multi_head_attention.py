"""Multi-head attention over image grids: local 1D, local 2D and global."""

import functools

import keras
import numpy as np
from keras import ops

from t2t_image.layers import initializers
from t2t_image.ops.dot_product_attention import NEG_INF
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


def decoding_window(attention_type, grid_shape, block_length=256, query_shape=(8, 16),
                    memory_flange=(8, 16)):
    """Static key windows of masked self-attention for incremental decoding.

    For every query position ``p`` (raster index on the ``rows x cols`` grid),
    the key positions that the full-sequence masked attention lets it see:
    ``local_1d``: the previous and the current block of ``block_length`` up to
    ``p`` (the whole causal prefix when ``rows * cols < 2 * block_length``, as
    in ``masked_local_attention_1d``); ``local_2d``: the top flange, the left
    flange and the causal part of the query block (block-local raster order),
    the memory layout of ``masked_local_attention_2d``; ``global``: the causal
    prefix. Windows are padded to a common length ``M``; padded slots and key
    positions outside the image are marked invisible.

    Parmar et al. 2018, Sec. 3.2 (local 1D/2D attention), here as gather
    tables for the cached decoder (T2T's ``fast_decode`` caches keys/values
    the same way but only for 1D/global attention).

    Args:
        attention_type: "local_1d", "local_2d" or "global".
        grid_shape: (rows, cols) of the position grid.
        block_length: int, "local_1d" block length.
        query_shape: (rows, cols), "local_2d" query block.
        memory_flange: (rows, cols), "local_2d" memory flange.

    Returns:
        ``None`` when every query sees its whole causal prefix (``global``, or
        ``local_1d`` with one block); otherwise ``(indices, visible)``: NumPy
        int32 ``[rows * cols, M]`` key positions (always valid indices) and
        bool ``[rows * cols, M]``.
    """
    check_attention_settings(attention_type, True, block_length, query_shape, memory_flange)
    return _decoding_window(attention_type, tuple(int(d) for d in grid_shape), int(block_length),
                            tuple(int(d) for d in query_shape),
                            tuple(int(d) for d in memory_flange))


@functools.lru_cache(maxsize=32)
def _decoding_window(attention_type, grid_shape, block_length, query_shape, memory_flange):
    # Cached: the tables are rebuilt on every trace of a decoding step otherwise.
    rows, cols = grid_shape
    length = rows * cols
    position = np.arange(length)[:, None]
    if attention_type == "global" or (
        attention_type == "local_1d" and length < 2 * block_length
    ):
        return None
    if attention_type == "local_1d":
        # One contiguous run of 2 * block_length keys, shifted into the grid at both ends.
        first = (position // block_length - 1) * block_length
        keys = np.clip(first, 0, length - 2 * block_length) + np.arange(2 * block_length)[None, :]
        visible = (keys >= first) & (keys <= position)
    else:
        keys, _, visible = _window_2d(grid_shape, query_shape, memory_flange)
    indices = np.where(visible, keys, 0).astype(np.int32)
    return indices, visible


@functools.lru_cache(maxsize=32)
def _block_window(grid_shape, query_shape, memory_flange):
    """Tables of the local_2d decoding cache's per-block window buffer.

    Every position of a query block has the same key window (top flange,
    left flange, the block, in ``decoding_window``'s order) and differs only
    in which keys are visible. So the cached step gathers its block's window
    once, at the block's first generated position (its top-left corner), into
    a buffer, and afterwards writes each new key into its slot there: a step
    reads the window once instead of also gathering a copy of it.

    Returns:
        ``(keys, slot, first)``: NumPy int32 ``[rows * cols, M]`` key
        positions of the window of each position's block (0 where outside
        the image, never visible), int32 ``[rows * cols]`` the buffer slot of
        the position's own key, bool ``[rows * cols]`` whether the position
        is its block's first in the generation order.
    """
    rows, cols = grid_shape
    qh, qw = query_shape
    keys, inside, _ = _window_2d(grid_shape, query_shape, memory_flange)
    qr, qc = np.divmod(np.arange(rows * cols), cols)
    r0, c0 = qr // qh * qh, qc // qw * qw
    # The block itself is the window's last qh * qw slots, in block-local raster order.
    slot = keys.shape[1] - qh * qw + (qr - r0) * qw + (qc - c0)
    first = (qr == r0) & (qc == c0)
    return np.where(inside, keys, 0).astype(np.int32), slot.astype(np.int32), first


def _window_2d(grid_shape, query_shape, memory_flange):
    """local_2d key windows: raw key positions, inside-the-image and visible masks."""
    rows, cols = grid_shape
    position = np.arange(rows * cols)[:, None]
    (qh, qw), (f0, f1) = query_shape, memory_flange
    regions = []  # (row offset, rows, col offset, cols) relative to the block corner
    if f0 > 0:
        regions.append((-f0, f0, -f1, qw + 2 * f1))
    if f1 > 0:
        regions.append((0, qh, -f1, f1))
    regions.append((0, qh, 0, qw))
    qr, qc = np.divmod(position, cols)
    r0, c0 = qr // qh * qh, qc // qw * qw
    key_rows, key_cols, center = [], [], []
    for row_offset, num_rows, col_offset, num_cols in regions:
        dr, dc = np.divmod(np.arange(num_rows * num_cols)[None, :], num_cols)
        key_rows.append(r0 + row_offset + dr)
        key_cols.append(c0 + col_offset + dc)
        center.append(np.full(dr.shape, row_offset == 0 and col_offset == 0))
    kr, kc = np.concatenate(key_rows, 1), np.concatenate(key_cols, 1)
    is_center = np.concatenate(center, 1)
    inside = (kr >= 0) & (kr < rows) & (kc >= 0) & (kc < cols)
    causal = (kr - r0) * qw + (kc - c0) <= (qr - r0) * qw + (qc - c0)
    return kr * cols + kc, inside, inside & (~is_center | causal)


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

    Incremental decoding (one position per call, keys/values cached):
    ``init_cache`` / ``call_step(inputs, cache, position)`` for masked
    self-attention, ``memory_cache`` / ``call_step(inputs, cache)`` for the
    encoder-decoder attention; see ``call_step``.

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
        # The position grid, needed by the incremental decoder's static windows.
        self._grid_shape = tuple(inputs_shape[1:-1])
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

    # ------------------------------------------------------ incremental decoding
    def _decoding_grid(self):
        grid = getattr(self, "_grid_shape", None)
        if grid is None or len(grid) != 2 or None in grid:
            raise ValueError(
                "incremental decoding needs a layer built on a static [batch, rows, cols, "
                f"depth] grid, got grid {grid!r}."
            )
        return grid

    def init_cache(self, batch_size):
        """Empty key/value cache of masked self-attention for incremental decoding.

        T2T ``fast_decode``'s per-layer ``k``/``v`` cache (Parmar et al. 2018,
        Sec. 3.2 attention, decoded one position at a time).

        Args:
            batch_size: int or scalar int tensor.

        Returns:
            dict with ``key`` `[batch, heads, slots, key_channels / heads]` and
            ``value`` `[batch, heads, slots, value_channels / heads]`, zeros in
            the compute dtype. Heads lead so that a step's attention is a
            batched matrix-vector product without transposes. ``slots`` is
            ``rows * cols`` (indexed by raster position on the grid the layer
            was built for), except for a windowed "local_1d" layer: a ring of
            ``2 * block_length`` slots (position ``p`` in slot ``p mod slots``)
            holding only the previous and the current block.
        """
        if not self.masked:
            raise ValueError("init_cache is for masked self-attention (masked=True), got "
                             "masked=False; use memory_cache for encoder-decoder attention.")
        heads, slots = self.num_heads, self._cache_slots()

        def zeros(units, slots=slots):
            return ops.zeros((batch_size, heads, slots, units // heads), self.compute_dtype)

        cache = {"key": zeros(self.key_dense.units), "value": zeros(self.value_dense.units)}
        if self._buffered():
            width = self._block_window()[0].shape[1]
            cache["window_key"] = zeros(self.key_dense.units, width)
            cache["window_value"] = zeros(self.value_dense.units, width)
        return cache

    def memory_cache(self, memory):
        """Projected keys/values of an encoder memory, computed once for decoding.

        T2T ``fast_decode``'s ``k_encdec``/``v_encdec`` cache entries
        (Parmar et al. 2018, Sec. 5.3 encoder-decoder attention).

        Args:
            memory: float tensor `[batch, ..., depth_m]` (the encoder output).

        Returns:
            dict with ``key`` `[batch, heads, length_m, key_channels / heads]`
            and ``value`` `[batch, heads, length_m, value_channels / heads]`
            (memory positions flattened in raster order).
        """
        def project(dense):
            x = dense(memory)
            x = ops.reshape(x, (-1, _prod(tuple(x.shape[1:-1])), x.shape[-1]))
            return self._split_heads(x)

        return {"key": project(self.key_dense), "value": project(self.value_dense)}

    def _ring(self):
        """Whether the decoding cache is a ring of the last two local_1d blocks."""
        rows, cols = self._decoding_grid()
        return self.attention_type == "local_1d" and rows * cols >= 2 * self.block_length

    def _buffered(self):
        """Whether the decoding cache also holds a local_2d block's window buffer."""
        return self.attention_type == "local_2d"

    def _block_window(self):
        return _block_window(tuple(self._decoding_grid()), tuple(self.query_shape),
                             tuple(self.memory_flange))

    def _gather_window(self, cache, position):
        # The window of `position`'s block, read from the full-grid cache.
        keys = ops.take(ops.convert_to_tensor(self._block_window()[0]), position, axis=0)
        return (ops.take(cache["key"], keys, axis=2), ops.take(cache["value"], keys, axis=2))

    def _cache_slots(self):
        rows, cols = self._decoding_grid()
        return 2 * self.block_length if self._ring() else rows * cols

    def prefill_cache(self, inputs, position):
        """The decoding cache of a whole known grid, from one parallel projection.

        The keys/values of every grid position of ``inputs`` in the layout of
        ``init_cache``, as if positions ``0 .. position - 1`` of the generation
        order had been decoded one by one with ``call_step``; entries of
        later positions hold whatever ``inputs`` holds there and stay
        invisible until ``call_step`` writes them. Used when the sliding
        window moves (``t2t_image.sampling.sliding_window``): one pass over
        the window instead of one step per known position. Not in T2T.

        Args:
            inputs: float tensor `[batch, rows, cols, depth]`, the attention's
                input on the grid the layer was built for.
            position: scalar int32 tensor, the raster index of the next
                position ``call_step`` will decode.

        Returns:
            dict like ``init_cache``'s.
        """
        rows, cols = self._decoding_grid()
        slots = self._cache_slots()

        def project(dense):
            x = dense(inputs)
            x = self._split_heads(ops.reshape(x, (-1, rows * cols, x.shape[-1])))
            if self._ring():
                # Slot s holds the latest position <= `position` congruent to s (as in call_step).
                position_ = ops.cast(position, "int32")
                held = position_ - (position_ - ops.arange(slots, dtype="int32")) % slots
                x = ops.take(x, ops.maximum(held, 0), axis=2)
            return ops.cast(x, self.compute_dtype)

        cache = {"key": project(self.key_dense), "value": project(self.value_dense)}
        if self._buffered():
            position = ops.cast(position, "int32")
            cache["window_key"], cache["window_value"] = self._gather_window(cache, position)
        return cache

    def _step_heads(self, x):
        # [batch, channels] -> [batch, heads, 1, channels / heads]
        return ops.reshape(x, (-1, self.num_heads, 1, x.shape[-1] // self.num_heads))

    def refresh_cache(self, cache, position):
        """``cache`` with the local_2d window buffer gathered for ``position``'s block.

        A local_2d ``call_step(..., window_ready=True)`` reads its block's
        window from a buffer; this fills it from the full-grid cache (correct
        at any position: keys not written yet are masked). Other attention
        types return ``cache`` unchanged. Not in T2T.

        Args:
            cache: dict from ``init_cache`` (or a previous ``call_step``).
            position: scalar int32 tensor, raster index on the grid.

        Returns:
            The updated cache.
        """
        if not self._buffered():
            return cache
        key, value = self._gather_window(cache, ops.cast(position, "int32"))
        return dict(cache, window_key=key, window_value=value)

    def call_step(self, inputs, cache, position=None, window_ready=False):
        """Attention output of one new position, with cached keys and values.

        With ``position`` (masked self-attention): the key and value of
        ``inputs`` are written into ``cache`` at raster index ``position`` and
        the query attends to the keys the full-sequence masked attention would
        show it (``decoding_window``; for "local_1d" the ring cache holds
        exactly the previous and current block); all of them were written by
        earlier steps of the generation order. Without
        ``position`` (encoder-decoder attention): the query attends to every
        key of a ``memory_cache`` and the cache is returned unchanged. Gives
        the output of ``call`` at that position (no dropout: inference only).

        Incremental decoding as in T2T's ``fast_decode`` /
        ``multihead_attention(cache=...)``, extended to local 1D/2D attention
        (Parmar et al. 2018, Sec. 3.2).

        Args:
            inputs: float tensor `[batch, depth]`, the new position's input.
            cache: dict from ``init_cache`` (self-attention) or ``memory_cache``.
            position: scalar int32 tensor (or int), raster index on the grid of
                the position being decoded; None for encoder-decoder attention.
            window_ready: bool (static), local_2d only: the cache's window
                buffer already holds this position's block (``refresh_cache``
                was called at the block's first position or later, and every
                step since was in the block). False: gather it at the block's
                first position (a conditional; under XLA it copies the caches
                at every step, so decoding loops refresh between blocks).

        Returns:
            ``(outputs, cache)``: float `[batch, hidden_size]` and the updated cache.
        """
        q = self._step_heads(self.query_dense(inputs))
        q = q * ops.cast((q.shape[-1]) ** -0.5, q.dtype)
        bias = None
        if position is None:
            k, v = cache["key"], cache["value"]
        else:
            if not self.masked:
                raise ValueError("call_step with a position needs masked self-attention "
                                 "(masked=True), got masked=False.")
            position = ops.cast(position, "int32")
            slots = self._cache_slots()
            slot = position % slots if self._ring() else position
            start = (0, 0, slot, 0)
            new_key = self._step_heads(self.key_dense(inputs))
            new_value = self._step_heads(self.value_dense(inputs))
            cache = dict(cache,
                         key=ops.slice_update(cache["key"], start, new_key),
                         value=ops.slice_update(cache["value"], start, new_value))
            rows, cols = self._decoding_grid()
            window = None if self._ring() else decoding_window(
                self.attention_type, (rows, cols), self.block_length, self.query_shape,
                self.memory_flange)
            if self._ring():
                # The local_1d ring: slot s holds the latest position <= `position`
                # congruent to s; the previous and the current block are visible.
                k, v = cache["key"], cache["value"]
                key_position = position - (position - ops.arange(slots, dtype="int32")) % slots
                first = ops.maximum((position // self.block_length - 1) * self.block_length, 0)
                visible = key_position >= first
            elif window is None:
                # Global attention (or one local_1d block): the causal prefix.
                k, v = cache["key"], cache["value"]
                visible = ops.arange(slots, dtype="int32") <= position
            else:
                # local_2d: the block's window buffer, gathered from the full-grid cache
                # at the block's first position (a gather, not a dynamic slice: that
                # makes XLA copy the cache), then one new key per step.
                _, slots_of, first = self._block_window()
                if window_ready:
                    k, v = cache["window_key"], cache["window_value"]
                else:
                    k, v = ops.cond(
                        ops.take(ops.convert_to_tensor(first), position, axis=0),
                        lambda: self._gather_window(cache, position),
                        lambda: (cache["window_key"], cache["window_value"]))
                start = (0, 0, ops.take(ops.convert_to_tensor(slots_of), position, axis=0), 0)
                k = ops.slice_update(k, start, new_key)
                v = ops.slice_update(v, start, new_value)
                cache.update(window_key=k, window_value=v)
                visible = ops.take(ops.convert_to_tensor(window[1]), position, axis=0)
            # The mask bias is float32, as everywhere in the attention softmax.
            bias = ops.cast(ops.where(visible, 0.0, NEG_INF), "float32")[None, None, None, :]
        out = dot_product_attention(q, k, v, bias=bias)  # [batch, heads, 1, depth_v]
        return self.output_dense(ops.reshape(out, (-1, out.shape[1] * out.shape[3]))), cache

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
