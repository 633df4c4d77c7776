"""Categorical likelihood and sampling, plus the explicit-seed random helper.

The Image Transformer's default output layer is a 256-way softmax per
channel intensity (Parmar et al. 2018, Sec. 3.2 "Loss function"; T2T's
``image_transformer`` with ``likelihood=CAT``), or a K-way softmax over the
codes of a VQ codebook for a code prior (Esser et al. 2021).  Sampling uses
the Gumbel-max trick on ``logits / temperature``, optionally restricted to
the ``top_k`` largest logits (as Esser et al. 2021 sample their priors).

Randomness is stateless and driven by an explicit ``seed``: an integer
tensor (int32 or int64), tuple, list or NumPy array of shape ``[2]``, or a
Python int ``s`` (meaning ``(s, 0)``).  The same seed gives the same
samples, so the functions can run inside a compiled while-loop with a
per-step seed derived from the step counter.
"""

import keras
import numpy as np
from keras import ops

# Uniform noise is clipped into [_UNIFORM_EPS, 1 - _UNIFORM_EPS] before logs, so
# that Gumbel / logistic noise stays finite (truncates at most ~2e-7 of the mass).
_UNIFORM_EPS = 1e-7


def _as_seed(seed):
    """Validates ``seed`` and returns it as an int32/int64 tensor of shape [2]."""
    if isinstance(seed, bool):
        raise ValueError(
            f"seed must be an integer tensor/tuple of shape [2] or an int, got seed={seed!r}"
        )
    if isinstance(seed, (int, np.integer)):
        seed = (int(seed), 0)
    if isinstance(seed, (tuple, list, np.ndarray)):
        array = np.asarray(seed)
        if array.shape != (2,) or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"seed must be an integer tensor/tuple of shape [2] or an int, got seed={seed!r}"
            )
        info = np.iinfo(np.int32)
        fits_int32 = bool(np.all((array >= info.min) & (array <= info.max)))
        return ops.convert_to_tensor(array, dtype="int32" if fits_int32 else "int64")
    if not ops.is_tensor(seed):
        raise ValueError(
            f"seed must be an integer tensor/tuple of shape [2] or an int, got seed={seed!r} "
            f"(type {type(seed).__name__})"
        )
    dtype = keras.backend.standardize_dtype(seed.dtype)
    if dtype not in ("int32", "int64") or tuple(seed.shape) != (2,):
        raise ValueError(
            "seed tensor must be int32/int64 with shape [2], "
            f"got dtype={dtype} shape={tuple(seed.shape)}"
        )
    return seed


def stateless_uniform(shape, seed):
    """Draws float32 uniform noise in ``[0, 1)`` from an explicit stateless seed.

    The same ``(shape, seed)`` always gives the same values, in eager mode, in
    ``tf.function`` (also ``jit_compile=True``) and inside while-loops.

    Backend note: in keras 3.15.1, ``keras.random.*`` under the TensorFlow
    backend only accepts an int, a ``SeedGenerator`` or ``None`` as seed
    (``keras/src/random/seed_generator.py: draw_seed`` raises on tensors),
    so a seed that is a traced tensor cannot go through ``keras.random``
    there.  The TF path therefore calls ``tf.random.stateless_uniform``
    directly (TF-only, isolated here).  Under the JAX backend
    ``keras.random.uniform`` accepts a ``jax.Array`` as the PRNG key and is
    used with the seed cast to uint32.

    Not a T2T function; the helper behind the samplers of Parmar et al.
    2018, Sec. 3.2 (categorical) and T2T's ``sample_from_discretized_mix_logistic``.

    Args:
        shape: the output shape (Python ints or scalar int tensors).
        seed: int32/int64 tensor, tuple, list or NumPy array of shape ``[2]``,
            or a Python int ``s`` meaning ``(s, 0)``.

    Returns:
        A float32 tensor of the given shape with values in ``[0, 1)``.

    Raises:
        ValueError: if ``seed`` is not of the accepted types/shape.
        NotImplementedError: for Keras backends other than tensorflow and jax.
    """
    seed = _as_seed(seed)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        # TF-only: keras.random rejects tensor seeds under the TF backend (see docstring).
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
    if backend == "jax":
        # keras.random under JAX takes a jax.Array seed as a raw (uint32[2]) PRNG key.
        return keras.random.uniform(shape, dtype="float32", seed=ops.cast(seed, "uint32"))
    raise NotImplementedError(
        f"stateless_uniform supports the tensorflow and jax Keras backends, got backend={backend!r}"
    )


def _as_temperature(temperature):
    """Validates ``temperature`` and returns it as a float32 scalar tensor."""
    if isinstance(temperature, bool):
        raise ValueError(
            f"temperature must be a float >= 0 or a scalar tensor, got temperature={temperature!r}"
        )
    if isinstance(temperature, (int, float, np.integer, np.floating)):
        if not float(temperature) >= 0.0 or not np.isfinite(float(temperature)):
            raise ValueError(
                f"temperature must be finite and >= 0, got temperature={temperature!r}"
            )
    elif not ops.is_tensor(temperature):
        raise ValueError(
            f"temperature must be a float >= 0 or a scalar tensor, got temperature={temperature!r} "
            f"(type {type(temperature).__name__})"
        )
    elif len(temperature.shape) != 0:
        raise ValueError(
            f"temperature tensor must be a scalar, got shape={tuple(temperature.shape)}"
        )
    return ops.cast(temperature, "float32")


def check_top_k(top_k, num_classes=None, num_classes_name=None):
    """Validates a top-k setting and returns it as an int (0 = no restriction).

    Not a T2T function (T2T samples from the full softmax); top-k sampling as
    used for the transformer priors of Esser et al. 2021 ("Taming
    Transformers", Sec. 4 / their sampling scripts).

    Args:
        top_k: None or 0 (off), or a Python int in ``[1, num_classes]``.
        num_classes: int or None, the number of classes (the last dimension
            of the logits); None skips the upper bound check.
        num_classes_name: optional str, what the bound is called in the error
            message (e.g. a model's ``vocab_size``).

    Returns:
        int: 0 when off, else ``top_k``.

    Raises:
        ValueError: naming ``top_k`` and the value received.
    """
    if top_k is None:
        return 0
    if num_classes is None:
        upper = "num_classes"
    else:
        upper = f"{num_classes_name}={num_classes}" if num_classes_name else str(num_classes)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0 \
            or (num_classes is not None and top_k > num_classes):
        raise ValueError(
            f"top_k must be None (or 0: off) or an int in [1, {upper}], got top_k={top_k!r}."
        )
    return int(top_k)


def top_k_logits(logits, top_k):
    """Sets every logit outside the ``top_k`` largest of its row to ``-inf``.

    The threshold is the k-th largest value of each row (``ops.top_k``, a
    static k), so logits tied with it are all kept. XLA-compilable; the
    result is float32 whatever the input dtype.

    Not a T2T function; the top-k filtering of Esser et al. 2021 (their
    ``top_k_logits``), written from its definition.

    Args:
        logits: float tensor ``[..., num_classes]``.
        top_k: int; 0 (or ``>= num_classes``) returns the logits unchanged
            (cast to float32).

    Returns:
        float32 tensor with the shape of ``logits``.
    """
    # Sampling is computed in float32 whatever the dtype policy.
    logits = ops.cast(logits, "float32")
    num_classes = logits.shape[-1]
    if not top_k or (num_classes is not None and top_k >= num_classes):
        return logits
    kth_largest = ops.top_k(logits, top_k, sorted=True)[0][..., top_k - 1:top_k]
    return ops.where(logits >= kth_largest, logits, float("-inf"))


def _tempered_gumbel_argmax(logits, uniform_noise, temperature):
    """Gumbel-max sampling from ``softmax(logits / temperature)`` given uniform noise.

    ``temperature == 0`` gives ``argmax(logits)`` (no noise).  The choice is
    made with ``where`` on the tensor value (no Python branching), and the
    division is guarded, so a traced scalar ``temperature`` works under XLA.

    Args:
        logits: float tensor ``[..., n]``.
        uniform_noise: float tensor broadcastable to ``logits``, in ``[0, 1)``.
        temperature: float32 scalar tensor, assumed ``>= 0``.

    Returns:
        int32 tensor ``logits.shape[:-1]``: the sampled indices.
    """
    # Sampling is computed in float32 whatever the dtype policy.
    logits = ops.cast(logits, "float32")
    u = ops.clip(ops.cast(uniform_noise, "float32"), _UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
    gumbel = -ops.log(-ops.log(u))
    positive = temperature > 0.0
    safe_temperature = ops.where(positive, temperature, 1.0)
    scores = ops.where(positive, logits / safe_temperature + gumbel, logits)
    return ops.cast(ops.argmax(scores, axis=-1), "int32")


def sample_categorical(logits, seed, temperature=1.0, top_k=None):
    """Samples indices from ``softmax(logits / temperature)``, optionally top-k.

    Uses the Gumbel-max trick: ``argmax(logits / temperature + g)`` with
    ``g = -log(-log(u))``, ``u`` uniform from :func:`stateless_uniform`.
    ``temperature == 0`` (Python float or traced scalar tensor) returns
    ``argmax(logits)`` without noise.  A negative tensor temperature is
    treated like 0 (Python values < 0 raise).  With ``top_k = k`` the logits
    outside the k largest are set to ``-inf`` first (``top_k_logits``), i.e.
    the draw is from the softmax renormalised over the k most likely
    classes; the uniform noise is the same as without top-k, so ``top_k``
    equal to the number of classes gives exactly the unrestricted draw.

    Corresponds to T2T's ``common_layers.sample_with_temperature`` /
    ``sample_temperature_per_example``; Parmar et al. 2018, Sec. 3.2 and
    Sec. 5 (sampling from the 256-way categorical); top-k as in Esser et
    al. 2021.

    Args:
        logits: float tensor ``[..., num_classes]`` (unnormalised).
        seed: int32/int64 tensor or tuple of shape ``[2]`` (stateless seed),
            or a Python int ``s`` meaning ``(s, 0)``.
        temperature: Python float >= 0 or float scalar tensor.
        top_k: None or 0 (off), or a static Python int in ``[1, num_classes]``.

    Returns:
        int32 tensor of shape ``logits.shape[:-1]``.

    Raises:
        ValueError: for a rank-0 ``logits``, a bad ``seed``, ``temperature``
            or ``top_k``.
    """
    logits = ops.convert_to_tensor(logits)
    if len(logits.shape) < 1:
        raise ValueError(f"logits must have rank >= 1, got logits.shape={tuple(logits.shape)}")
    top_k = check_top_k(top_k, logits.shape[-1])
    temperature = _as_temperature(temperature)
    noise = stateless_uniform(ops.shape(logits), seed)
    return _tempered_gumbel_argmax(top_k_logits(logits, top_k), noise, temperature)


def categorical_log_prob(logits, labels):
    """Log-probabilities of integer ``labels`` under ``softmax(logits)``.

    Corresponds to the per-element (negated) cross-entropy of T2T's
    ``image_transformer`` CAT likelihood; Parmar et al. 2018, Sec. 3.2.

    Args:
        logits: float tensor ``[..., num_classes]``.
        labels: integer tensor ``logits.shape[:-1]`` with values in
            ``[0, num_classes)``.

    Returns:
        float32 tensor ``logits.shape[:-1]``: ``log softmax(logits)[labels]``.

    Raises:
        ValueError: if ``labels`` does not have rank ``logits`` rank - 1.
    """
    logits = ops.convert_to_tensor(logits)
    labels = ops.convert_to_tensor(labels)
    if len(logits.shape) < 1 or len(labels.shape) != len(logits.shape) - 1:
        raise ValueError(
            f"labels must have shape logits.shape[:-1], got logits.shape={tuple(logits.shape)} "
            f"labels.shape={tuple(labels.shape)}"
        )
    # log_softmax is computed in float32 whatever the dtype of logits.
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    labels = ops.expand_dims(ops.cast(labels, "int32"), -1)
    return ops.squeeze(ops.take_along_axis(log_probs, labels, axis=-1), -1)
