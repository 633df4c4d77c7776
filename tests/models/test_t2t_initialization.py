"""Initial weights follow T2T's formulas, variable by variable.

T2T's image hparams set ``initializer="uniform_unit_scaling"``, gain 0.2, which
``optimize.get_variable_initializer`` turns into
``tf.variance_scaling_initializer(0.2, mode="fan_avg", distribution="uniform")``:
Uniform(-L, L) with L = sqrt(3 * 0.2 / ((fan_in + fan_out) / 2)), fans as
TF1's ``_compute_fans`` (2-D: the shape; conv: channels times receptive field).
Every variable created without an initializer gets it: attention and FFN
kernels, the output layer, the pixel tables (``get_channel_embeddings``), the
class table (``class_label_bottom`` -> ``common_layers.embedding``) and the DMOL
input conv (``image_channel_compress_bottom``). The learned position tables
(``add_positional_embedding_nd``) are Normal(0, depth**-0.5); biases start at
zero, layer-norm scales at one. Each check compares a table's empirical std and
max |x| with the formula, on tables large enough (>= 1,536 values) that the
tolerances below are > 4 standard errors.
"""

import math
import re

import numpy as np
import pytest

from t2t_image.models.image_transformer import ImageTransformer
from t2t_image.models.img2img_transformer import Img2ImgTransformer

D = 512
STD_RTOL = 0.05  # relative error allowed on the empirical std


def _fans(shape):
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _t2t_uniform_limit(shape):
    fan_in, fan_out = _fans(shape)
    return math.sqrt(3.0 * 0.2 / ((fan_in + fan_out) / 2.0))


def check_t2t_uniform(values):
    limit = _t2t_uniform_limit(values.shape)
    assert np.abs(values).max() <= limit * (1 + 1e-6)
    assert np.abs(values).max() >= 0.95 * limit  # the whole interval is used
    np.testing.assert_allclose(values.std(), limit / math.sqrt(3.0), rtol=STD_RTOL)
    assert abs(values.mean()) < 5 * limit / math.sqrt(3.0 * values.size)


def check_position_normal(values):
    sigma = values.shape[-1] ** -0.5  # Normal(0, depth**-0.5), not truncated
    np.testing.assert_allclose(values.std(), sigma, rtol=STD_RTOL)
    assert abs(values.mean()) < 5 * sigma / math.sqrt(values.size)
    assert 3 * sigma < np.abs(values).max() < 6 * sigma


def check_zeros(values):
    np.testing.assert_array_equal(values, 0.0)


def check_ones(values):
    np.testing.assert_array_equal(values, 1.0)


RULES = {
    "attention_kernels": (r"_attention/(query|key|value|output)/kernel$", check_t2t_uniform),
    "ffn_kernels": (r"/ffn_(hidden|output)/kernel$", check_t2t_uniform),
    "output_layer_kernel": (r"/output_logits/kernel$", check_t2t_uniform),
    "pixel_tables": (r"/(pixel|input)_embedding/embeddings$", check_t2t_uniform),
    "class_table": (r"/class_embeddings$", check_t2t_uniform),
    "dmol_input_conv_kernel": (r"/conv_input/kernel$", check_t2t_uniform),
    "position_tables": (r"position_signal/(row|col)_embeddings$", check_position_normal),
    "biases": (r"/(ffn_hidden|ffn_output|output_logits|conv_input)/bias$", check_zeros),
    "layer_norm_scales": (r"norm[^/]*/gamma$", check_ones),
    "layer_norm_biases": (r"norm[^/]*/beta$", check_zeros),
}


@pytest.fixture(scope="module")
def models():
    common = dict(hidden_size=D, filter_size=2 * D, num_heads=4, num_decoder_layers=1,
                  layer_prepostprocess_dropout=0.0)
    cat = ImageTransformer(image_height=8, image_width=8, block_length=64, num_classes=10,
                           layer_preprocess_sequence="n", layer_postprocess_sequence="da",
                           **common)
    cat({"targets": np.zeros((1, 8, 8, 3), "uint8"), "labels": np.zeros((1,), "int32")})
    dmol = ImageTransformer(image_height=32, image_width=32, block_length=256,
                            likelihood="dmol", pos="emb", **common)
    dmol({"targets": np.zeros((1, 32, 32, 3), "uint8")})
    sr = Img2ImgTransformer(input_height=8, input_width=8, image_height=16, image_width=16,
                            num_encoder_layers=1, block_length=64, **common)
    sr({"inputs": np.zeros((1, 8, 8, 3), "uint8"), "targets": np.zeros((1, 16, 16, 3), "uint8")})
    return [cat, dmol, sr]


def _variables(models):
    return [(v.path, np.asarray(v, np.float64)) for m in models for v in m.weights]


def test_every_variable_has_a_t2t_rule(models):
    for path, _ in _variables(models):
        matched = [name for name, (pattern, _) in RULES.items() if re.search(pattern, path)]
        assert len(matched) == 1, f"{path} matches {matched or 'no rule'}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_initial_distribution_matches_t2t(models, rule):
    pattern, check = RULES[rule]
    checked = [path for path, values in _variables(models) if re.search(pattern, path)]
    assert checked, f"no variable for rule {rule}"
    for path, values in _variables(models):
        if re.search(pattern, path):
            try:
                check(values)
            except AssertionError as error:
                raise AssertionError(f"{path} {values.shape}: {error}") from error


def test_class_table_std_is_t2t_default_not_embedding_normal(models):
    table = np.asarray(models[0].class_embeddings)
    # variance scaling 0.2, fan_avg over (10 + 512) / 2: std 0.0277, not 512**-0.5 = 0.0442.
    assert abs(table.std() - 0.0277) < 0.0277 * STD_RTOL
    assert np.abs(table).max() <= math.sqrt(0.6 / 261.0) * (1 + 1e-6)


def test_position_tables_enter_times_sqrt_depth(models):
    dmol = models[1]
    signal = np.asarray(dmol.position_signal(np.zeros((1, 32, 32, D), "float32")))[0]
    rows = np.asarray(dmol.position_signal.row_embeddings)
    cols = np.asarray(dmol.position_signal.col_embeddings)
    np.testing.assert_allclose(signal[3, 7], (rows[3] + cols[7]) * math.sqrt(D), rtol=1e-5,
                               atol=1e-5)
    # T2T's decoder input starts position-dominated: each table adds unit variance.
    np.testing.assert_allclose(signal.std(), math.sqrt(2.0), rtol=STD_RTOL)
