"""The cached sampler against the slow reference, completion, conditioning, temperature."""

import numpy as np
import pytest

from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.sampling import reference_sample
from t2t_image.sampling import sample
from tests.sampling.test_cached_decoding import tiny
from tests.tiny_models import H
from tests.tiny_models import SAMPLER_CASES
from tests.tiny_models import W
from tests.tiny_models import bad_model


@pytest.mark.parametrize("cls,overrides,conditioning", SAMPLER_CASES)
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
        (dict(top_k=257), r"top_k.*\[1, vocab_size=256\]"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.0), "top_k"),
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


def top_k_violations(model, images, top_k):
    """How many drawn sub-pixels lie outside the top_k logits they were drawn from.

    The model is causal, so its outputs on the final image are the logits each
    value was drawn from.
    """
    logits = np.asarray(model({"targets": images.astype(np.int32)}))
    drawn = np.take_along_axis(logits, images[..., None].astype(np.int64), -1)
    kth = np.sort(logits, -1)[..., -top_k][..., None]
    return int((drawn < kth).sum())


def test_top_k_sampling_matches_the_reference_and_stays_in_the_top_k():
    model = bad_model(dec_attention_type="local_2d", scale=3.0)
    fast = sample(model, 2, temperature=2.0, seed=4, top_k=3)
    slow = reference_sample(model, 2, temperature=2.0, seed=4, top_k=3)
    np.testing.assert_array_equal(fast, slow)
    assert top_k_violations(model, fast, 3) == 0
    # Without XLA for the loop (the draws are XLA-compiled either way): the same samples.
    run = lambda **kw: sample(model, 2, seed=4, jit_compile=False, **kw)  # noqa: E731
    np.testing.assert_array_equal(run(temperature=2.0, top_k=3), fast)
    # Not vacuous: at this temperature, sampling without top_k leaves the top 3 often.
    free = run(temperature=2.0)
    assert top_k_violations(model, free, 3) > 10
    # top_k=1 is the argmax image (temperature 0), whatever the temperature.
    np.testing.assert_array_equal(run(temperature=2.0, top_k=1), run(temperature=0.0))
    # top_k=vocab_size (and 0) is the unrestricted draw.
    np.testing.assert_array_equal(run(temperature=2.0, top_k=256), free)
    np.testing.assert_array_equal(run(temperature=2.0, top_k=0), free)


def test_top_k_is_rejected_for_dmol():
    model = bad_model(likelihood="dmol")
    with pytest.raises(ValueError, match="top_k.*likelihood='cat'"):
        sample(model, 1, top_k=5)
    with pytest.raises(ValueError, match="top_k.*likelihood='cat'"):
        reference_sample(model, 1, top_k=5)


def code_prior(vocab_size, **overrides):
    """A sharp random prior over 4x4 grids of codes in 0..vocab_size-1."""
    model = tiny(ImageTransformer, num_channels=1, vocab_size=vocab_size, **overrides)
    model({"targets": np.zeros((1, H, W, 1), np.int32)})
    model.output_layer.kernel.assign(model.output_layer.kernel * 20.0)
    return model


def test_code_prior_samples_codes_above_255_and_checks_prefix_values():
    model = code_prior(300, dec_attention_type="local_1d")
    fast = sample(model, 3, seed=2, top_k=50)
    slow = reference_sample(model, 3, seed=2, top_k=50)
    assert fast.dtype == np.int32 and fast.shape == (3, H, W, 1)
    np.testing.assert_array_equal(fast, slow)
    assert fast.min() >= 0 and fast.max() < 300 and (fast > 255).any()
    prefix = np.full((3, 1, W, 1), 299)
    completed = sample(model, 3, seed=2, prefix=prefix, num_prefix_rows=1, jit_compile=False)
    np.testing.assert_array_equal(completed[:, :1], prefix)
    with pytest.raises(ValueError, match=r"0\.\.299 \(vocab_size=300\)"):
        sample(model, 3, prefix=prefix + 1, num_prefix_rows=1)
    with pytest.raises(ValueError, match="top_k"):
        sample(model, 3, top_k=301)
    small = code_prior(16, dec_attention_type="local_2d", query_shape=(2, 2))
    codes = sample(small, 2, seed=1, jit_compile=False)
    assert codes.dtype == np.uint8 and codes.max() < 16
    np.testing.assert_array_equal(codes, reference_sample(small, 2, seed=1))
