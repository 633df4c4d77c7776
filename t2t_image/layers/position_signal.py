"""Position signals on the 2-D grid: sinusoids or learned row/column tables."""

import keras
from keras import ops

from t2t_image.layers import initializers
from t2t_image.ops.timing_signal import add_timing_signal_nd

POSITION_KINDS = ("timing", "emb")


@keras.saving.register_keras_serializable(package="t2t_image")
class PositionSignal(keras.layers.Layer):
    """Adds a position signal to a `[batch, rows, cols, depth]` grid.

    ``kind="timing"``: T2T's n-dimensional sinusoid (``add_timing_signal_nd``)
    over the two grid axes. ``kind="emb"``: learned tables, one of
    ``[max_rows, depth]`` for the row and one of ``[max_cols, depth]`` for the
    column, initialised Normal(0, depth**-0.5) and added times sqrt(depth),
    as T2T's ``add_positional_embedding_nd`` does (so the added signal starts
    at unit variance and Adam moves it sqrt(depth) times faster than the
    stored table). Image Transformer, Section 3.1 ("we add a d-dimensional
    encoding of coordinates").

    Args:
        kind: "timing" or "emb".
        max_rows: int, grid rows the learned table covers (kind="emb").
        max_cols: int, grid columns the learned table covers (kind="emb").
        **kwargs: passed on to `keras.layers.Layer`.

    Call arguments:
        x: float tensor `[batch, rows, cols, depth]`.

    Returns:
        ``x`` plus the signal, same shape and dtype.

    Example:
    >>> PositionSignal("timing")(np.zeros((1, 4, 12, 8), "float32")).shape
    (1, 4, 12, 8)
    """

    def __init__(self, kind="timing", max_rows=None, max_cols=None, **kwargs):
        super().__init__(**kwargs)
        if kind not in POSITION_KINDS:
            raise ValueError(f"pos must be one of {POSITION_KINDS}, got {kind!r}.")
        if kind == "emb" and (not max_rows or not max_cols):
            raise ValueError(
                "pos='emb' needs max_rows and max_cols, got "
                f"max_rows={max_rows}, max_cols={max_cols}."
            )
        self.kind = kind
        self.max_rows = max_rows
        self.max_cols = max_cols

    def build(self, input_shape):
        if self.kind != "emb":
            return
        rows, cols, depth = input_shape[1], input_shape[2], input_shape[3]
        if (rows is not None and rows > self.max_rows) or (
            cols is not None and cols > self.max_cols
        ):
            raise ValueError(
                f"PositionSignal(kind='emb') covers {self.max_rows}x{self.max_cols} "
                f"positions, got a grid of {rows}x{cols}."
            )
        init = initializers.embedding_normal(depth)
        self.row_embeddings = self.add_weight(
            name="row_embeddings", shape=(self.max_rows, depth), initializer=init
        )
        self.col_embeddings = self.add_weight(
            name="col_embeddings", shape=(self.max_cols, depth), initializer=init
        )

    def call(self, x):
        if self.kind == "timing":
            return add_timing_signal_nd(x)
        rows, cols = ops.shape(x)[1], ops.shape(x)[2]
        # T2T's add_positional_embedding_nd multiplies each table by sqrt(depth).
        scale = float(ops.shape(self.row_embeddings)[-1]) ** 0.5
        row = ops.cast(self.row_embeddings[:rows] * scale, x.dtype)
        col = ops.cast(self.col_embeddings[:cols] * scale, x.dtype)
        return x + row[None, :, None, :] + col[None, None, :, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, max_rows=self.max_rows, max_cols=self.max_cols)
        return config
