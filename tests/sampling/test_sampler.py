"""The cached sampler against the slow reference, completion, conditioning, temperature."""

import numpy as np
import pytest

from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.sampling import reference_sample
from t2t_image.sampling import sample
from tests.sampling.test_cached_decoding import H
from tests.sampling.test_cached_decoding import W
from tests.sampling.test_cached_decoding import tiny


def bad_model(cls=ImageTransformer, scale=None, **overrides):
    """A tiny model with deliberately sharp random outputs, so sampling bugs show."""
    model = tiny(cls, **{"num_mixtures": 3, **overrides})
    features = {"targets": np.zeros((1, H, W, 3), np.int32)}
    if model.num_classes:
        features["labels"] = np.zeros(1, np.int32)
    if cls is Img2ImgTransformer:
        features["inputs"] = np.zeros((1, 2, 2, 3), np.int32)
    model(features)
    if scale is None:
        scale = 20.0 if model.likelihood == "cat" else 4.0
    model.output_layer.kernel.assign(model.output_layer.kernel * scale)
    return model


@pytest.mark.parametrize(
    "cls,overrides,conditioning",
    [
        (ImageTransformer, dict(dec_attention_type="local_1d"), {}),
        (ImageTransformer, dict(dec_attention_type="local_2d", query_shape=(3, 5)), {}),
        (ImageTransformer, dict(dec_attention_type="local_2d", likelihood="dmol",
                                block_shift="block_raster"), {}),
        (ImageTransformer, dict(dec_attention_type="global", likelihood="dmol"), {}),
        (ImageTransformer, dict(dec_attention_type="local_1d", num_classes=5),
         dict(labels=np.array([3, 1]))),
        (Img2ImgTransformer, dict(dec_attention_type="local_2d"),
         dict(inputs=np.random.RandomState(1).randint(0, 256, (2, 2, 2, 3)))),
    ],
)
def test_fast_sampler_reproduces_the_reference(cls, overrides, conditioning):
    model = bad_model(cls, **overrides)
    slow = reference_sample(model, 2, temperature=0.9, seed=11, **conditioning)
    fast = sample(model, 2, temperature=0.9, seed=11, **conditioning)
    assert fast.dtype == np.uint8 and fast.shape == (2, H, W, 3)
    np.testing.assert_array_equal(fast, slow)
    # The images are far from constant, so a wrong position, seed or shift would show.
    assert len(np.unique(fast)) > 10
    assert not np.array_equal(fast[0], fast[1])


def test_completion_keeps_the_given_rows_and_matches_the_reference():
    # local_2d with 2-row query blocks: 3 kept rows end in the middle of a block row.
    model = bad_model(dec_attention_type="local_2d", likelihood="cat")
    prefix = np.random.RandomState(2).randint(0, 256, (2, H, W, 3)).astype(np.uint8)
    fast = sample(model, 2, seed=3, prefix=prefix, num_prefix_rows=3)
    slow = reference_sample(model, 2, seed=3, prefix=prefix, num_prefix_rows=3)
    np.testing.assert_array_equal(fast[:, :3], prefix[:, :3])
    np.testing.assert_array_equal(fast, slow)
    assert not np.array_equal(fast[:, 3], prefix[:, 3])
    # The prefix rows condition the rest: another prefix gives another completion.
    other = sample(model, 2, seed=3, prefix=prefix[::-1], num_prefix_rows=3)
    assert not np.array_equal(other[:, 3:], fast[::-1, 3:])
    # A single prefix image (no batch axis) is used for every sample.
    single = sample(model, 2, seed=3, prefix=prefix[0, :3], num_prefix_rows=3)
    np.testing.assert_array_equal(single[:, :3], np.repeat(prefix[:1, :3], 2, axis=0))


def test_class_and_low_res_conditioning_change_the_samples():
    model = bad_model(num_classes=4)
    a = sample(model, 2, seed=5, labels=[0, 0])
    b = sample(model, 2, seed=5, labels=2)
    c = sample(model, 2, seed=5, labels=[0, 2])
    assert not np.array_equal(a[0], b[0])
    np.testing.assert_array_equal(c[0], a[0])  # the label of one sample affects only it
    np.testing.assert_array_equal(c[1], b[1])
    sr = bad_model(Img2ImgTransformer, dec_attention_type="local_1d")
    for block in sr.decoder_blocks:  # random weights barely look at the encoder: amplify
        for dense in (block.encdec_attention.value_dense, block.encdec_attention.output_dense):
            dense.kernel.assign(dense.kernel * 10.0)
    dark, bright = np.zeros((2, 2, 2, 3), np.uint8), np.full((2, 2, 2, 3), 255, np.uint8)
    d = sample(sr, 2, seed=5, inputs=dark)
    e = sample(sr, 2, seed=5, inputs=bright)
    assert (d != e).reshape(2, -1).any(axis=1).all()  # both samples change
    # Each sample follows its own low-res input.
    f = sample(sr, 2, seed=5, inputs=np.stack([dark[0], bright[1]]))
    np.testing.assert_array_equal(f[0], d[0])
    np.testing.assert_array_equal(f[1], e[1])


def _dmol_mode(params):
    """NumPy argmax pixel of DMOL parameters [..., 10K] (the temperature-0 sample)."""
    k = params.shape[-1] // 10
    lead = params.shape[:-1]
    comp = params[..., :k].argmax(-1)[..., None, None]
    means = np.take_along_axis(params[..., k:4 * k].reshape(lead + (k, 3)), comp, -2)[..., 0, :]
    coeffs = np.tanh(np.take_along_axis(params[..., 7 * k:].reshape(lead + (k, 3)), comp, -2))
    coeffs = coeffs[..., 0, :]
    r = np.clip(means[..., 0], -1, 1)
    g = np.clip(means[..., 1] + coeffs[..., 0] * r, -1, 1)
    b = np.clip(means[..., 2] + coeffs[..., 1] * r + coeffs[..., 2] * g, -1, 1)
    return np.round((np.stack([r, g, b], -1) + 1) * 127.5)


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
def test_temperature_zero_gives_the_argmax_image(likelihood):
    model = bad_model(dec_attention_type="local_2d", likelihood=likelihood)
    image = sample(model, 2, temperature=0.0, seed=1)
    np.testing.assert_array_equal(sample(model, 2, temperature=0.0, seed=99), image)
    # The argmax image is a fixed point of the causal model: each value is the mode
    # of the distribution the model predicts from the image's earlier values.
    out = np.asarray(model({"targets": image}), np.float64)
    mode = out.argmax(-1) if likelihood == "cat" else _dmol_mode(out)
    np.testing.assert_array_equal(image, mode)
    assert len(np.unique(image)) > 3


def test_progress_and_no_xla_give_the_same_samples():
    model = bad_model(dec_attention_type="local_1d", likelihood="dmol")
    expected = sample(model, 3, seed=8)
    calls = []
    chunked = sample(model, 3, seed=8, progress=lambda done, total: calls.append((done, total)),
                     progress_chunks=5)
    np.testing.assert_array_equal(chunked, expected)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and calls[-1] == (16, 16)
    assert len(calls) == 5
    np.testing.assert_array_equal(sample(model, 3, seed=8, jit_compile=False), expected)
    assert not np.array_equal(sample(model, 3, seed=9), expected)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(num_samples=0), "num_samples"),
        (dict(temperature=-0.5), "temperature"),
        (dict(seed=1.5), "seed"),
        (dict(labels=[1, 2]), "unconditional"),
        (dict(num_prefix_rows=2), "prefix"),
        (dict(prefix=np.zeros((2, 2, W, 3))), "num_prefix_rows=0"),
        (dict(prefix=np.zeros((2, 1, W, 3)), num_prefix_rows=2), "prefix must have shape"),
        (dict(prefix=np.full((2, 2, W, 3), 300), num_prefix_rows=2), "0..255"),
        (dict(num_prefix_rows=H + 1), "num_prefix_rows"),
    ],
)
def test_invalid_arguments_are_named(kwargs, pattern):
    model = bad_model()
    args = dict(num_samples=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        sample(model, **args)
    with pytest.raises(ValueError, match=pattern):
        reference_sample(model, **args)


def test_conditional_models_require_their_conditioning():
    model = bad_model(num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3"):
        sample(model, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        sample(model, 2, labels=[0, 3])
    with pytest.raises(ValueError, match="shape"):
        sample(model, 2, labels=[0, 1, 2])
