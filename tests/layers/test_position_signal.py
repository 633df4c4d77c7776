import numpy as np
import pytest

from t2t_image.layers.position_signal import PositionSignal
from t2t_image.ops.timing_signal import add_timing_signal_nd


def test_timing_is_the_nd_sinusoid():
    x = np.random.RandomState(0).randn(2, 4, 6, 8).astype("float32")
    np.testing.assert_allclose(
        np.asarray(PositionSignal("timing")(x)), np.asarray(add_timing_signal_nd(x)))


def test_learned_tables_add_row_and_column_vectors():
    layer = PositionSignal("emb", max_rows=4, max_cols=6)
    x = np.zeros((1, 4, 6, 8), "float32")
    out = np.asarray(layer(x))
    rows, cols = np.asarray(layer.row_embeddings), np.asarray(layer.col_embeddings)
    # T2T's add_positional_embedding_nd adds each table times sqrt(depth).
    np.testing.assert_allclose(out[0, 2, 5], (rows[2] + cols[5]) * 8**0.5, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0], (rows[0] + cols[0]) * 8**0.5, rtol=1e-6)
    assert PositionSignal.from_config(layer.get_config()).get_config() == layer.get_config()


def test_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match="pos"):
        PositionSignal("sinusoid")
    with pytest.raises(ValueError, match="max_rows"):
        PositionSignal("emb")
    with pytest.raises(ValueError, match="covers 2x2"):
        PositionSignal("emb", max_rows=2, max_cols=2)(np.zeros((1, 3, 3, 4), "float32"))
