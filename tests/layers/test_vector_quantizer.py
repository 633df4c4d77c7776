"""Tests of VectorQuantizer: assignment, losses, straight-through gradient, EMA and restarts."""

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.layers.vector_quantizer import VectorQuantizer
from t2t_image.ops.categorical import stateless_uniform

K, D = 6, 3


def latents(seed=0, shape=(2, 3, 4, D)):
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype("float32")


def make(z, seed=1, **overrides):
    """A built quantizer with a random N(0, 1) codebook (and matching EMA sums)."""
    args = dict(codebook_size=K, code_dim=D, dead_code_threshold=0.0)
    args.update(overrides)
    vq = VectorQuantizer(**args)
    vq.build(z.shape)
    codebook = np.random.default_rng(seed).normal(0.0, 1.0, (K, D)).astype("float32")
    vq.codebook.assign(codebook)
    if vq.codebook_update == "ema":
        vq.ema_sums.assign(codebook)
    return vq, codebook


def brute_force(z, codebook):
    """float64 nearest entries: argmin_k ||z - e_k||^2 from the definition."""
    flat = z.reshape(-1, D).astype(np.float64)
    d = ((flat[:, None, :] - codebook[None].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(axis=1), flat


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_nearest_entry_losses_and_statistics_match_numpy(update):
    z = latents()
    vq, codebook = make(z, codebook_update=update)
    out = {k: np.asarray(v) for k, v in vq(z).items()}
    codes, flat = brute_force(z, codebook)
    assert out["codes"].dtype == np.int32 and out["codes"].shape == (2, 3, 4)
    np.testing.assert_array_equal(out["codes"].ravel(), codes)
    assert len(set(codes)) > 2  # the check is not trivial
    np.testing.assert_array_equal(out["quantized"].reshape(-1, D), codebook[codes])
    np.testing.assert_allclose(out["commitment_loss"], ((flat - codebook[codes]) ** 2).mean(),
                               rtol=1e-6)
    expected_codebook_loss = ((flat - codebook[codes]) ** 2).mean() if update == "loss" else 0.0
    np.testing.assert_allclose(out["codebook_loss"], expected_codebook_loss, rtol=1e-6)
    np.testing.assert_array_equal(out["counts"], np.bincount(codes, minlength=K))
    sums = np.zeros((K, D))
    np.add.at(sums, codes, flat)
    np.testing.assert_allclose(out["sums"], sums, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(vq.lookup(out["codes"])), out["quantized"])


def test_straight_through_gradient_and_codebook_gradient():
    z = tf.constant(latents())
    vq, codebook = make(z.numpy(), codebook_update="loss")
    weight = tf.constant(latents(seed=5))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        out = vq(z)
        task_loss = tf.reduce_sum(weight * out["quantized"] ** 2)
    codes, flat = brute_force(z.numpy(), codebook)
    quantized = codebook[codes].reshape(z.shape)
    # d loss / d z == d loss / d quantized, evaluated at quantized = e_codes.
    np.testing.assert_allclose(tape.gradient(task_loss, z), 2 * weight.numpy() * quantized,
                               rtol=1e-6)
    assert tape.gradient(task_loss, vq.codebook) is None
    # d codebook_loss / d e_k = -2 / (N * D) * sum_{i: code_i = k} (z_i - e_k); z gets none.
    expected = np.zeros((K, D))
    np.add.at(expected, codes, -2.0 * (flat - codebook[codes]) / flat.size)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(out["codebook_loss"],
                                                                  vq.codebook)), expected,
                               atol=1e-6)
    assert tape.gradient(out["codebook_loss"], z) is None
    np.testing.assert_allclose(tape.gradient(out["commitment_loss"], z),
                               2.0 * (z.numpy() - quantized) / flat.size, atol=1e-7)
    assert tape.gradient(out["commitment_loss"], vq.codebook) is None


def ema_reference(codebook, ema_counts, ema_sums, usage, counts, sums, decay, eps):
    """The EMA update with Laplace smoothing (VQ-VAE App. A.1, Sonnet VectorQuantizerEMA)."""
    usage = decay * usage + (1 - decay) * counts
    n = decay * ema_counts + (1 - decay) * counts
    m = decay * ema_sums + (1 - decay) * sums
    total = n.sum()
    smoothed = (n + eps) / (total + len(n) * eps) * total
    return m / smoothed[:, None], n, m, usage


def test_ema_update_matches_numpy_over_two_steps():
    z = latents()
    vq, codebook = make(z, ema_decay=0.9, epsilon=1e-3)
    state = (codebook.astype(np.float64), np.ones(K), codebook.astype(np.float64), np.zeros(K))
    for step in range(2):
        z_step = latents(seed=10 + step)
        out = vq(z_step)
        restarted = vq.update_codebook(out["counts"], out["sums"], z_step.reshape(-1, D), step)
        assert int(restarted) == 0
        state = ema_reference(*state, np.asarray(out["counts"], np.float64),
                              np.asarray(out["sums"], np.float64), 0.9, 1e-3)
        np.testing.assert_allclose(vq.codebook.numpy(), state[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vq.ema_counts.numpy(), state[1], rtol=1e-6)
        np.testing.assert_allclose(vq.ema_sums.numpy(), state[2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vq.usage.numpy(), state[3], rtol=1e-6)
    assert np.abs(vq.codebook.numpy() - codebook).max() > 1e-2


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_dead_codes_restart_to_candidates_and_live_codes_follow_the_update(update):
    z = latents()
    vq, codebook = make(z, codebook_update=update, dead_code_threshold=0.5, ema_decay=0.8)
    usage = np.array([0.0, 2.0, 0.3, 5.0, 0.61, 0.0], "float32")
    vq.usage.assign(usage)
    counts = np.array([0, 0, 1, 3, 0, 2], "float32")  # 0.8 * usage + 0.2 * counts
    new_usage = 0.8 * usage + 0.2 * counts  # [0, 1.6, 0.44, 4.6, 0.488, 0.4]
    dead = new_usage < 0.5
    np.testing.assert_array_equal(dead, [True, False, True, False, True, True])
    sums = np.random.default_rng(3).normal(0.0, 1.0, (K, D)).astype("float32")
    candidates = latents(seed=4, shape=(7, D))
    seed = (3, 9)
    restarted = vq.update_codebook(counts, sums, candidates, seed)
    assert int(restarted) == dead.sum()
    index = np.floor(np.asarray(stateless_uniform((K,), seed)) * 7).astype(int)
    got = vq.codebook.numpy()
    np.testing.assert_array_equal(got[dead], candidates[index[dead]])
    if update == "loss":
        np.testing.assert_array_equal(got[~dead], codebook[~dead])
    else:
        live = ema_reference(codebook, np.ones(K), codebook, usage, counts, sums, 0.8, 1e-5)
        np.testing.assert_allclose(got[~dead], live[0][~dead], rtol=1e-5)
        np.testing.assert_array_equal(vq.ema_counts.numpy()[dead], 1.0)
        np.testing.assert_array_equal(vq.ema_sums.numpy()[dead], candidates[index[dead]])
    np.testing.assert_allclose(vq.usage.numpy(), np.where(dead, 0.5, new_usage), rtol=1e-6)


def test_codebook_usage_is_the_normalised_perplexity():
    vq, _ = make(latents())
    assert float(vq.codebook_usage()) == 0.0  # no update yet
    usage = np.array([0.0, 1.0, 0.5, 0.5, 3.0, 0.0])
    vq.usage.assign(usage.astype("float32"))
    p = usage[usage > 0] / usage.sum()
    np.testing.assert_allclose(float(vq.codebook_usage()), np.exp(-(p * np.log(p)).sum()) / K,
                               rtol=1e-6)
    vq.usage.assign(np.full(K, 2.0, "float32"))
    np.testing.assert_allclose(float(vq.codebook_usage()), 1.0, rtol=1e-6)
    vq.usage.assign(np.eye(K, dtype="float32")[2])
    np.testing.assert_allclose(float(vq.codebook_usage()), 1.0 / K, rtol=1e-6)


def test_restart_depends_only_on_the_seed():
    z = latents()
    candidates = latents(seed=4, shape=(50, D))
    results = []
    for seed in [(1, 2), (1, 2), (2, 2)]:
        vq, _ = make(z, codebook_update="loss", dead_code_threshold=1.0)
        vq.update_codebook(np.zeros(K), np.zeros((K, D)), candidates, seed)
        results.append(vq.codebook.numpy())
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0] - results[2]).max() > 0


def test_threshold_zero_never_restarts():
    z = latents()
    vq, codebook = make(z, codebook_update="loss", dead_code_threshold=0.0)
    assert int(vq.update_codebook(np.zeros(K), np.zeros((K, D)), z.reshape(-1, D), 0)) == 0
    np.testing.assert_array_equal(vq.codebook.numpy(), codebook)


def test_variables_and_initial_state():
    ema = VectorQuantizer(8, 4)
    ema.build((None, 2, 2, 4))
    assert not ema.trainable_variables
    assert sorted(v.name for v in ema.non_trainable_variables) == [
        "codebook", "ema_counts", "ema_sums", "usage"]
    np.testing.assert_array_equal(ema.ema_sums.numpy(), ema.codebook.numpy())
    np.testing.assert_array_equal(ema.ema_counts.numpy(), np.ones(8))
    assert np.abs(ema.codebook.numpy()).max() <= 1.0 / 8
    loss = VectorQuantizer(8, 4, codebook_update="loss")
    loss.build((None, 2, 2, 4))
    assert [v.name for v in loss.trainable_variables] == ["codebook"]
    assert [v.name for v in loss.non_trainable_variables] == ["usage"]


def test_xla_call_and_update_match_eager():
    z = latents()
    eager, _ = make(z, dead_code_threshold=0.5)
    compiled, _ = make(z, dead_code_threshold=0.5)
    for vq in (eager, compiled):
        vq.usage.assign([5.0, 0.0, 5.0, 0.0, 5.0, 0.0])  # codes 1, 3, 5 die

    def step(vq, x, seed):
        out = vq(x)
        return out, vq.update_codebook(out["counts"], out["sums"], tf.reshape(x, (-1, D)), seed)

    out_e, n_e = step(eager, tf.constant(z), tf.constant([1, 2]))
    out_c, n_c = tf.function(lambda x, s: step(compiled, x, s), jit_compile=True)(
        tf.constant(z), tf.constant([1, 2]))
    for key in out_e:
        np.testing.assert_allclose(out_c[key], out_e[key], rtol=1e-5, atol=1e-6)
    assert int(n_c) == int(n_e) > 0
    # Stateless random numbers may differ between XLA and eager kernels: check
    # the restarts against the compiled draw.
    dead = compiled.usage.numpy() == 0.5
    assert dead.sum() == int(n_c) and not dead.all()
    uniform = tf.function(lambda s: stateless_uniform((K,), s), jit_compile=True)
    num_candidates = z.size // D
    index = np.floor(uniform(tf.constant([1, 2])).numpy() * num_candidates).astype(int)
    np.testing.assert_array_equal(compiled.codebook.numpy()[dead], z.reshape(-1, D)[index[dead]])
    np.testing.assert_allclose(compiled.codebook.numpy()[~dead], eager.codebook.numpy()[~dead],
                               atol=1e-6)


def test_mixed_precision_quantizes_in_float32():
    z = latents()
    vq, codebook = make(z, dtype="mixed_bfloat16")
    out = vq(z)
    z = np.asarray(tf.cast(tf.cast(z, tf.bfloat16), tf.float32))  # inputs are autocast
    assert out["quantized"].dtype == "bfloat16"
    assert out["commitment_loss"].dtype == "float32" and out["sums"].dtype == "float32"
    np.testing.assert_array_equal(np.asarray(out["codes"]).ravel(), brute_force(z, codebook)[0])


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(codebook_size=0), "codebook_size"),
        (dict(code_dim=2.5), "code_dim"),
        (dict(codebook_update="kmeans"), "codebook_update"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(dead_code_threshold=-1.0), "dead_code_threshold"),
        (dict(commitment_cost=-0.1), "commitment_cost"),
    ],
)
def test_invalid_settings_name_the_parameter(overrides, pattern):
    args = dict(codebook_size=K, code_dim=D)
    args.update(overrides)
    with pytest.raises(ValueError, match=pattern):
        VectorQuantizer(**args)


def test_wrong_code_dim_and_config_round_trip():
    with pytest.raises(ValueError, match="code_dim=3"):
        VectorQuantizer(K, D)(np.zeros((1, 2, 2, 4), "float32"))
    z = latents()
    vq, _ = make(z, commitment_cost=0.5, codebook_update="loss", ema_decay=0.95,
                 epsilon=1e-4, dead_code_threshold=2.0)
    clone = VectorQuantizer.from_config(vq.get_config())
    clone.build(z.shape)
    clone.set_weights(vq.get_weights())
    assert clone.get_config() == vq.get_config()
    np.testing.assert_array_equal(np.asarray(clone(z)["quantized"]), np.asarray(vq(z)["quantized"]))
