"""Tests of the decoder-only ImageTransformer: causality, likelihoods, config, I/O."""

import numpy as np
import pytest
import keras

from t2t_image.models.image_transformer import ImageTransformer
from t2t_image.ops.dmol import discretized_mix_logistic_loss
from t2t_image.ops.local_attention_2d import block_raster_order
from tests.ops import attention_reference as ref

H = W = 8
QUERY_SHAPE = (2, 4)
MEMORY_FLANGE = (2, 4)


def tiny(**overrides):
    args = dict(
        image_height=H, image_width=W, hidden_size=32, filter_size=48, num_heads=2,
        num_decoder_layers=1, block_length=8, query_shape=QUERY_SHAPE,
        memory_flange=MEMORY_FLANGE, layer_prepostprocess_dropout=0.0,
    )
    args.update(overrides)
    return ImageTransformer(**args)


def random_images(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, H, W, 3)).astype("uint8")


def grid_outputs(model, out):
    """Model outputs as [batch, positions, features] in raster order of the grid."""
    out = np.asarray(out)
    rows, cols = model.grid_shape
    return out.reshape(out.shape[0], rows * cols, -1)


def influence(model, base):
    """influence[t, s]: does perturbing position s change the output at position t."""
    rows, cols = model.grid_shape
    positions = rows * cols
    images = np.repeat(base[None], positions + 1, axis=0)
    for s in range(positions):
        y, col = divmod(s, cols)
        if model.likelihood == "cat":
            x, c = divmod(col, 3)
            images[s + 1, y, x, c] = (images[s + 1, y, x, c].astype(int) + 97) % 256
        else:
            images[s + 1, y, col] = (images[s + 1, y, col].astype(int) + 97) % 256
    out = grid_outputs(model, model({"targets": images}))
    delta = np.abs(out[1:] - out[:1]).max(axis=-1)  # [s, t]
    return (delta > 1e-6).T


def expected_influence(model):
    """One layer: output t sees inputs src(m) for every key m visible from t."""
    rows, cols = model.grid_shape
    positions = rows * cols
    kind = model.dec_attention_type
    if kind == "local_1d":
        mask = ref.local_1d_mask(positions, model.block_length)
    elif kind == "global":
        mask = ref.causal_mask(positions)
    else:
        mask = ref.masked_local_2d_mask(rows, cols, model.query_shape, model.memory_flange)
    # src[m]: the position whose value the shifted decoder input holds at m.
    src = np.full(positions, -1)
    if kind == "local_2d":
        order = block_raster_order(rows, cols, model.query_shape)
        if model.block_shift == "blockwise":
            qr, qc = model.query_shape
            block = lambda p: (p // cols // qr, p % cols // qc)  # noqa: E731
            for prev, cur in zip(order[:-1], order[1:]):
                if block(prev) == block(cur):
                    src[cur] = prev
        else:
            src[order[1:]] = order[:-1]
    else:
        src[1:] = np.arange(positions - 1)
    expected = np.zeros((positions, positions), bool)
    for t in range(positions):
        for m in np.nonzero(mask[t])[0]:
            if src[m] >= 0:
                expected[t, src[m]] = True
    return expected


def generation_rank(model):
    rows, cols = model.grid_shape
    if model.dec_attention_type == "local_2d":
        order = block_raster_order(rows, cols, model.query_shape)
    else:
        order = np.arange(rows * cols)
    rank = np.empty(rows * cols, int)
    rank[order] = np.arange(rows * cols)
    return rank


CASES = [
    ("local_1d", "cat", "blockwise"),
    ("local_2d", "cat", "blockwise"),
    ("local_2d", "cat", "block_raster"),
    ("global", "cat", "blockwise"),
    ("local_1d", "dmol", "blockwise"),
    ("local_2d", "dmol", "blockwise"),
    ("global", "dmol", "blockwise"),
]


@pytest.mark.parametrize("attention,likelihood,shift", CASES)
def test_receptive_field_is_exactly_the_block_structure(attention, likelihood, shift):
    model = tiny(dec_attention_type=attention, likelihood=likelihood, num_mixtures=2,
                 block_shift=shift)
    got = influence(model, random_images(1)[0])
    expected = expected_influence(model)
    rank = generation_rank(model)
    later_or_same = rank[None, :] >= rank[:, None]  # [t, s]: s not before t
    assert not (got & later_or_same).any(), "an output depends on its own or a later step"
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("attention,likelihood,shift", CASES)
def test_two_layers_stay_causal(attention, likelihood, shift):
    model = tiny(dec_attention_type=attention, likelihood=likelihood, num_mixtures=2,
                 block_shift=shift, num_decoder_layers=2, pos="emb",
                 layer_preprocess_sequence="n", layer_postprocess_sequence="da")
    got = influence(model, random_images(1, seed=1)[0])
    rank = generation_rank(model)
    assert not (got & (rank[None, :] >= rank[:, None])).any()
    # Two layers see further back than one: the first output is influenced by nothing,
    # the last by many earlier steps.
    assert got.sum(axis=1)[np.argmin(rank)] == 0
    assert got.sum(axis=1)[np.argmax(rank)] > 1


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
def test_output_shapes_and_dtypes(likelihood):
    model = tiny(likelihood=likelihood, num_mixtures=3)
    out = model({"targets": random_images(2)})
    expected = (2, H, W, 3, 256) if likelihood == "cat" else (2, H, W, 30)
    assert tuple(out.shape) == expected
    assert out.dtype == "float32"
    assert model.compute_output_shape({"targets": (2, H, W, 3)}) == expected


def test_cat_log_prob_matches_softmax_of_logits():
    model = tiny()
    images = random_images(3)
    logits = np.asarray(model({"targets": images}), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-6)
    chosen = np.take_along_axis(logp, images[..., None].astype(int), axis=-1)[..., 0]
    expected = chosen.reshape(3, -1).sum(-1)
    got = np.asarray(model.log_prob({"targets": images}))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    bpd = float(model.bits_per_dim({"targets": images}))
    np.testing.assert_allclose(bpd, -expected.mean() / (H * W * 3 * np.log(2)), rtol=1e-5)
    # An untrained model is close to uniform: about 8 bits per dimension.
    assert 7.0 < bpd < 9.5


def test_dmol_log_prob_sums_the_per_pixel_dmol_likelihood():
    model = tiny(likelihood="dmol", num_mixtures=2, image_height=2, image_width=2,
                 query_shape=(1, 1))
    images = random_images(2)[:, :2, :2]
    lp = np.asarray(model.log_prob({"targets": images}))
    pred = model({"targets": images})
    nll = np.asarray(discretized_mix_logistic_loss(pred, images / 127.5 - 1.0))
    np.testing.assert_allclose(lp, -nll.reshape(2, -1).sum(-1), rtol=1e-6)
    assert np.all(np.isfinite(lp)) and np.all(lp < 0)


def test_class_conditioning_changes_outputs_and_is_required():
    model = tiny(num_classes=10)
    images = random_images(2)
    a = np.asarray(model({"targets": images, "labels": np.array([1, 1])}))
    b = np.asarray(model({"targets": images, "labels": np.array([1, 7])}))
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[1] - b[1]).max() > 1e-4
    with pytest.raises(ValueError, match="num_classes=10"):
        model({"targets": images})
    with pytest.raises(ValueError, match="unconditional"):
        tiny()({"targets": images, "labels": np.array([1, 7])})


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(hidden_size=30, num_heads=4), "hidden_size"),
        (dict(likelihood="dmol", num_channels=1), "num_channels=1"),
        (dict(dec_attention_type="local_2d", query_shape=(16, 4)), "query_shape"),
        (dict(likelihood="logistic"), "likelihood"),
        (dict(dec_attention_type="local_3d"), "attention_type"),
        (dict(layer_postprocess_sequence="dzn"), "layer_postprocess_sequence"),
        (dict(block_length=0), "block_length"),
        (dict(pos="learned"), "pos"),
    ],
)
def test_invalid_configuration_names_the_parameter(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny(**overrides)


def test_wrong_image_size_names_the_setting():
    with pytest.raises(ValueError, match="image_height=8"):
        tiny()({"targets": np.zeros((1, 16, 16, 3), "uint8")})


def _same_weights_model(model, features):
    clone = ImageTransformer.from_config(model.get_config())
    clone(features)
    clone.set_weights(model.get_weights())
    return clone


@pytest.mark.parametrize("attention,likelihood", [("local_1d", "cat"), ("local_2d", "dmol")])
def test_config_and_keras_file_round_trip(tmp_path, attention, likelihood):
    model = tiny(dec_attention_type=attention, likelihood=likelihood, num_mixtures=2,
                 num_classes=3, pos="emb", layer_preprocess_sequence="n",
                 layer_postprocess_sequence="da")
    features = {"targets": random_images(2), "labels": np.array([0, 2])}
    out = np.asarray(model(features))
    clone = _same_weights_model(model, features)
    assert clone.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(clone(features)), out)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(features)), out, atol=1e-6)


def test_mixed_precision_keeps_float32_outputs():
    model = tiny(dtype="mixed_bfloat16")
    out = model({"targets": random_images(1)})
    assert out.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(out)))
    assert model.decoder_blocks[0].norms[0].compute_dtype == "float32"


def test_dropout_only_in_training():
    model = tiny(layer_prepostprocess_dropout=0.3)
    images = random_images(1)
    a = np.asarray(model({"targets": images}))
    np.testing.assert_array_equal(a, np.asarray(model({"targets": images})))
    b = np.asarray(model({"targets": images}, training=True))
    assert np.abs(a - b).max() > 1e-4


# ------------------------------------------------------------------ vocab_size
def code_prior(**overrides):
    """A prior over 4x4 grids of codes in 0..K-1 (Taming Transformers' second stage)."""
    args = dict(image_height=4, image_width=4, num_channels=1, vocab_size=11,
                query_shape=(2, 2), memory_flange=(1, 2))
    args.update(overrides)
    return tiny(**args)


@pytest.mark.parametrize("attention", ["local_1d", "local_2d", "global"])
def test_code_prior_logits_log_prob_and_causality(attention):
    model = code_prior(dec_attention_type=attention)
    codes = np.random.RandomState(3).randint(0, 11, (2, 4, 4, 1)).astype("int32")
    logits = np.asarray(model({"targets": codes}), np.float64)
    assert logits.shape == (2, 4, 4, 1, 11)
    assert model.compute_output_shape({"targets": (2, 4, 4, 1)}) == (2, 4, 4, 1, 11)
    assert tuple(model.output_layer.kernel.shape) == (32, 11)
    assert tuple(model.embedding.embeddings.shape) == (11, 32)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = np.take_along_axis(logp, codes[..., None], -1).reshape(2, -1).sum(-1)
    np.testing.assert_allclose(np.asarray(model.log_prob({"targets": codes})), expected,
                               rtol=1e-5)
    # Causal on the code grid: a code never influences its own or an earlier output.
    rank = generation_rank(model)
    base = model({"targets": codes[:1]})
    for s in range(16):
        changed = codes[:1].copy()
        changed[0, s // 4, s % 4, 0] = (changed[0, s // 4, s % 4, 0] + 5) % 11
        delta = np.abs(np.asarray(model({"targets": changed})) - np.asarray(base))
        touched = delta.reshape(16, -1).max(-1) > 1e-6
        assert not touched[rank <= rank[s]].any()


def test_vocab_size_validation_names_the_setting():
    with pytest.raises(ValueError, match="vocab_size=300"):
        tiny(likelihood="dmol", vocab_size=300)
    for bad in (1, 0, 16.0, None):
        with pytest.raises(ValueError, match="vocab_size"):
            tiny(vocab_size=bad)
    assert tiny(likelihood="dmol", vocab_size=256).vocab_size == 256


def test_vocab_size_config_round_trip_and_old_configs(tmp_path):
    import json
    import zipfile

    model = code_prior(vocab_size=300)
    codes = np.random.RandomState(4).randint(0, 300, (2, 4, 4, 1)).astype("int32")
    out = np.asarray(model({"targets": codes}))
    assert model.get_config()["vocab_size"] == 300
    clone = _same_weights_model(model, {"targets": codes})
    assert clone.vocab_size == 300 and clone.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(clone({"targets": codes})), out)
    path = tmp_path / "prior.keras"
    model.save(path)
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(path)({"targets": codes})),
                               out, atol=1e-6)
    # A .keras file written before vocab_size existed has no such key: it loads with 256.
    old = tiny(image_height=4, image_width=4)
    images = random_images(1)[:, :4, :4]
    expected = np.asarray(old({"targets": images}))
    old.save(tmp_path / "old.keras")
    stripped = tmp_path / "stripped.keras"
    with zipfile.ZipFile(tmp_path / "old.keras") as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                del config["config"]["vocab_size"]
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = keras.saving.load_model(stripped)
    assert loaded.vocab_size == 256
    np.testing.assert_allclose(np.asarray(loaded({"targets": images})), expected, atol=1e-6)
