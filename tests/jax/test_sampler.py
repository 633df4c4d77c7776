"""The samplers under the JAX backend: the cached loop equals the reference sampler."""

import keras
import numpy as np
import pytest

from t2t_image.sampling import compiled
from t2t_image.sampling import reference_sample
from t2t_image.sampling import sample
from t2t_image.sampling import sample_sliding_window
from t2t_image.sampling.common import loop_seed
from tests.tiny_models import H
from tests.tiny_models import SAMPLER_CASES
from tests.tiny_models import W
from tests.tiny_models import bad_model


@pytest.mark.parametrize("cls,overrides,conditioning", SAMPLER_CASES)
def test_cached_sampler_equals_the_reference(cls, overrides, conditioning):
    model = bad_model(cls, **overrides)
    fast = sample(model, 2, temperature=0.9, seed=11, **conditioning)
    slow = reference_sample(model, 2, temperature=0.9, seed=11, **conditioning)
    assert fast.dtype == np.uint8 and fast.shape == (2, H, W, 3)
    np.testing.assert_array_equal(fast, slow)
    # Far from constant images: a wrong position, seed or shift would show.
    assert len(np.unique(fast)) > 10
    assert not np.array_equal(fast[0], fast[1])


def test_the_whole_sampler_is_one_jitted_while_loop():
    model = bad_model(dec_attention_type="local_1d")
    sample(model, 2, seed=1)
    functions = compiled._COMPILED[model]
    assert list(functions) == [("sample/top_k=0", True)]
    run = functions[("sample/top_k=0", True)]
    args = (np.zeros((2, H, W, 3), np.int32), {}, loop_seed(1), np.float32(1.0), np.int32(0))
    jaxpr = run.jaxpr(*args).jaxpr
    loops = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "while"]
    assert len(loops) == 1  # not unrolled: one loop over the 48 steps
    assert sum(eqn.primitive.name == "while" for eqn in jaxpr.eqns) == 1


def test_completion_keeps_the_given_rows_and_equals_the_reference():
    model = bad_model(dec_attention_type="local_2d")
    prefix = np.random.RandomState(2).randint(0, 256, (2, H, W, 3)).astype(np.uint8)
    fast = sample(model, 2, seed=3, prefix=prefix, num_prefix_rows=3)
    slow = reference_sample(model, 2, seed=3, prefix=prefix, num_prefix_rows=3)
    np.testing.assert_array_equal(fast[:, :3], prefix[:, :3])
    np.testing.assert_array_equal(fast, slow)
    other = sample(model, 2, seed=3, prefix=prefix[::-1], num_prefix_rows=3)
    assert not np.array_equal(other[:, 3:], fast[::-1, 3:])


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
def test_temperature_zero_is_the_argmax_whatever_the_seed(likelihood):
    model = bad_model(likelihood=likelihood)
    image = sample(model, 2, temperature=0.0, seed=1)
    np.testing.assert_array_equal(sample(model, 2, temperature=0.0, seed=99), image)
    np.testing.assert_array_equal(reference_sample(model, 2, temperature=0.0, seed=5), image)
    assert not np.array_equal(sample(model, 2, temperature=1.0, seed=1), image)


def test_top_k_equals_the_reference_and_restricts_the_draws():
    model = bad_model()
    fast = sample(model, 2, temperature=2.0, seed=4, top_k=3)
    np.testing.assert_array_equal(fast, reference_sample(model, 2, temperature=2.0, seed=4,
                                                         top_k=3))
    assert not np.array_equal(fast, sample(model, 2, temperature=2.0, seed=4))
    # top_k=1 is the argmax image.
    np.testing.assert_array_equal(sample(model, 2, temperature=2.0, seed=4, top_k=1),
                                  sample(model, 2, temperature=0.0, seed=4))


def test_seeds_beyond_32_bits_equal_the_reference_and_seeds_differ():
    model = bad_model()
    big = 2**40 + 3
    np.testing.assert_array_equal(sample(model, 2, seed=big), reference_sample(model, 2, seed=big))
    assert not np.array_equal(sample(model, 2, seed=big), sample(model, 2, seed=3 + 1))
    assert not np.array_equal(sample(model, 2, seed=1), sample(model, 2, seed=2))


def test_progress_chunks_give_the_same_samples():
    model = bad_model(dec_attention_type="local_2d", likelihood="dmol")
    expected = sample(model, 3, seed=8)
    calls = []
    chunked = sample(model, 3, seed=8, progress=lambda done, total: calls.append((done, total)),
                     progress_chunks=5)
    np.testing.assert_array_equal(chunked, expected)
    assert calls[-1] == (H * W, H * W) and len(calls) == 5


def test_progress_is_reported_after_the_chunk_has_run(monkeypatch):
    # JAX dispatches asynchronously: a progress report must wait for the work.
    import t2t_image.sampling.sampler as sampler_module

    ready = []

    def recording_finished(x):
        out = compiled.finished(x)
        ready.append(x.is_ready())
        return out

    monkeypatch.setattr(sampler_module, "finished", recording_finished)
    model = bad_model()
    calls = []
    sample(model, 2, seed=3, progress=lambda done, total: calls.append(len(ready)),
           progress_chunks=4)
    assert calls == [1, 2, 3, 4] and all(ready)


def test_new_weights_are_used_without_recompiling():
    # The weights are arguments of the jitted loop, not constants traced into it.
    model = bad_model()
    before = sample(model, 2, seed=6)
    model.output_layer.kernel.assign(-model.output_layer.kernel)
    after = sample(model, 2, seed=6)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, reference_sample(model, 2, seed=6))
    assert len(compiled._COMPILED[model]) == 1 + 1  # the sampler and the reference forward


def test_sliding_window_at_training_size_equals_sample_and_grows():
    model = bad_model(dec_attention_type="local_2d", likelihood="dmol", block_shift="block_raster")
    np.testing.assert_array_equal(sample_sliding_window(model, 2, H, W, seed=3),
                                  sample(model, 2, seed=3))
    prefix = np.random.RandomState(0).randint(0, 256, (2, 6, 6, 3))
    big = sample_sliding_window(model, 2, 6, 6, seed=3, prefix=prefix, num_prefix_rows=2)
    assert big.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(big[:, :2], prefix[:, :2])
    assert len(np.unique(big[:, 2:])) > 10


def test_backend_is_jax():
    assert keras.backend.backend() == "jax"


def test_code_prior_and_two_stage_sampling_run_under_jax():
    from t2t_image.two_stage import sample_two_stage
    from tests.two_stage.test_sampler import K
    from tests.two_stage.test_sampler import first_stage
    from tests.two_stage.test_sampler import prior

    p, fs = prior(), first_stage()
    p.output_layer.kernel.assign(p.output_layer.kernel * 20.0)
    codes = sample(p, 2, seed=7, top_k=5)
    np.testing.assert_array_equal(codes, reference_sample(p, 2, seed=7, top_k=5))
    images, grid = sample_two_stage(p, fs, 2, seed=7, top_k=5)
    np.testing.assert_array_equal(grid, codes[..., 0])
    assert images.shape == (2, 8, 8, 3) and 0 <= images.min() and images.max() <= 255
    images, grid = sample_two_stage(p, fs, 2, height=6, width=6, seed=3)  # sliding window
    np.testing.assert_array_equal(grid, sample_sliding_window(p, 2, 6, 6, seed=3)[..., 0])
    assert grid.shape == (2, 6, 6) and grid.max() < K and images.shape == (2, 12, 12, 3)
