"""Discretized mixture of logistics (DMOL): likelihood and sampling.

The Image Transformer's alternative output distribution (Parmar et al. 2018,
Sec. 3.2: "a discretized mixture of logistics ... as in PixelCNN++"), in the
parameter layout of T2T's ``common_layers.split_to_discretized_mix_logistic_params``
/ ``discretized_mix_logistic_loss`` / ``sample_from_discretized_mix_logistic``.

``pred`` has ``10 * K`` channels for ``K`` mixture components, in this order::

    [K mixture logits | 3K means | 3K log-scales | 3K coefficients]

and each ``3K`` block is read as ``[K, 3]`` (element ``3k + c`` is
component ``k``, channel ``c``).  Log-scales are floored at -7, the three
coefficients go through ``tanh``.  Within a pixel the channels are
autoregressive: the green mean is shifted by ``c0 * R`` and the blue mean by
``c1 * R + c2 * G``.  Pixels are scaled to ``[-1, 1]`` as ``x / 127.5 - 1``.
"""

import math

from keras import ops

from t2t_image.ops.categorical import (
    _UNIFORM_EPS,
    _as_temperature,
    _tempered_gumbel_argmax,
    stateless_uniform,
)

_MIN_LOG_SCALE = -7.0
_HALF_BIN = 1.0 / 255.0
_EDGE = 0.999
_MIN_CDF_DELTA = 1e-5
_LOG_HALF_NUM_BINS = math.log(127.5)
# Sampling caps log(scale * temperature) at 80: a logistic that wide puts all
# but ~e^-80 of its mass outside [-1, 1] anyway, and the cap keeps scale * noise finite.
_MAX_SAMPLE_LOG_SCALE = 80.0


def _num_mixtures(pred):
    channels = pred.shape[-1] if len(pred.shape) >= 1 else None
    if channels is None or channels <= 0 or channels % 10 != 0:
        raise ValueError(
            "pred must have a static last dimension 10 * num_mixtures > 0, "
            f"got pred.shape={tuple(pred.shape)}"
        )
    return channels // 10


def _split_params(pred, num_mixtures):
    """Splits float32 ``pred [..., 10K]`` into logits ``[..., K]`` and
    means, floored log-scales, tanh coefficients, each ``[..., K, 3]``."""
    k = num_mixtures
    leading = tuple(ops.shape(pred)[:-1])

    def block(start):
        return ops.reshape(pred[..., start : start + 3 * k], leading + (k, 3))

    logits = pred[..., :k]
    means = block(k)
    log_scales = ops.maximum(block(4 * k), _MIN_LOG_SCALE)
    coeffs = ops.tanh(block(7 * k))
    return logits, means, log_scales, coeffs


def discretized_mix_logistic_loss(pred, labels):
    """Per-pixel negative log-likelihood (nats) of a discretized mixture of logistics.

    For each component and channel, with ``x`` the label value, ``mean`` the
    (coefficient-adjusted) mean and ``s = exp(log_scale)``, the probability of
    the 8-bit bin centred at ``x`` is ``sigmoid((x + 1/255 - mean) / s) -
    sigmoid((x - 1/255 - mean) / s)``; the value-0 bin (``x < -0.999``) takes
    the whole lower tail ``sigmoid((x + 1/255 - mean) / s)`` and the value-255
    bin (``x > 0.999``) the whole upper tail ``1 - sigmoid((x - 1/255 - mean)
    / s)``.  When an interior bin's probability is ``<= 1e-5`` it is replaced
    by the mid-point density approximation ``pdf(x) * 2/255`` (i.e.
    ``log_pdf_mid - log(127.5)``).  Channel log-probs are summed, then
    combined over components with ``log_softmax(mixture logits)`` and
    ``logsumexp``.  The green and blue means are shifted by
    ``c0 * x_R`` and ``c1 * x_R + c2 * x_G`` using the *label* values.

    Stable for extreme parameters (no NaN/Inf in value or gradient): all
    ``where`` branches are finite, log-CDFs use softplus forms.

    Corresponds to T2T's ``common_layers.discretized_mix_logistic_loss``
    (PixelCNN++, Salimans et al. 2017); Parmar et al. 2018, Sec. 3.2.

    Args:
        pred: float tensor ``[batch, h, w, 10 * K]`` (any float dtype).  Any
            rank >= 1 works if ``labels`` has the same rank; leading
            dimensions of size 1 broadcast against ``labels`` (e.g. one
            pixel's parameters scored against many labels).
        labels: float tensor ``[batch, h, w, 3]`` with values ``x / 127.5 - 1``
            in ``[-1, 1]``.

    Returns:
        float32 tensor ``[batch, h, w]`` (the broadcast leading shape): the
        NLL of each pixel in nats.

    Raises:
        ValueError: if the last dimension of ``pred`` is not a positive
            multiple of 10, ``labels`` does not end in 3 channels or has a
            different rank, or static leading dimensions do not broadcast.
    """
    pred = ops.convert_to_tensor(pred)
    labels = ops.convert_to_tensor(labels)
    num_mixtures = _num_mixtures(pred)
    if len(labels.shape) != len(pred.shape) or labels.shape[-1] != 3:
        raise ValueError(
            "labels must have shape pred.shape[:-1] + (3,), "
            f"got labels.shape={tuple(labels.shape)} "
            f"pred.shape={tuple(pred.shape)}"
        )
    for dim_pred, dim_labels in zip(pred.shape[:-1], labels.shape[:-1]):
        if None in (dim_pred, dim_labels) or 1 in (dim_pred, dim_labels):
            continue
        if dim_pred != dim_labels:
            raise ValueError(
                "labels and pred must have the same (or broadcastable) leading dimensions, "
                f"got labels.shape="
                f"{tuple(labels.shape)} pred.shape={tuple(pred.shape)}"
            )
    # The likelihood is computed in float32 whatever the dtype of pred (e.g. bfloat16).
    pred = ops.cast(pred, "float32")
    labels = ops.cast(labels, "float32")
    logits, means, log_scales, coeffs = _split_params(pred, num_mixtures)
    log_mixture_weights = ops.log_softmax(logits, axis=-1)
    x_r, x_g, x_b = labels[..., 0], labels[..., 1], labels[..., 2]

    # Unrolled over the static number of components: every op stays elementwise, which
    # XLA fuses into one vectorised loop (a reduction over a small [..., K, 3] axis
    # is ~4x slower on CPU).  Leading dims of pred and labels broadcast.
    component_log_probs = []
    for k in range(num_mixtures):
        mean, log_scale, coeff = means[..., k, :], log_scales[..., k, :], coeffs[..., k, :]
        log_prob = sum(_channel_log_prob(x, _channel_mean(mean, coeff, x_r, x_g, c),
                                         log_scale[..., c])
                       for c, x in enumerate((x_r, x_g, x_b)))
        component_log_probs.append(log_prob + log_mixture_weights[..., k])
    return -_logsumexp(component_log_probs)


def _channel_mean(mean, coeff, x_r, x_g, channel):
    """The autoregressive mean of ``channel``: G += c0 * x_R, B += c1 * x_R + c2 * x_G."""
    if channel == 0:
        return mean[..., 0]
    if channel == 1:
        return mean[..., 1] + coeff[..., 0] * x_r
    return mean[..., 2] + coeff[..., 1] * x_r + coeff[..., 2] * x_g


def discretized_mix_logistic_channel_log_probs(pred, previous, channel):
    """Log-probabilities of all 256 values of one channel given the pixel's earlier channels.

    The per-sub-pixel table of a DMOL pixel, for entropy coding it one channel
    at a time: ``log p(x_c = v | x_0 .. x_{c-1})`` up to a constant (the
    mid-point approximation of tiny bins, as in
    ``discretized_mix_logistic_loss``, means the 256 values need not sum to
    exactly 1: normalise with a softmax). The component weights are the
    mixture weights times each component's probability of the earlier
    channels, so the three conditionals multiply to the loss's joint
    probability of the pixel. Not a T2T function (T2T only scores and samples).

    Args:
        pred: float tensor `[..., 10 * K]` (any float dtype).
        previous: integer tensor `[..., 3]`, the pixel's values (channels
            before ``channel`` are read).
        channel: static int, 0 (R), 1 (G) or 2 (B).

    Returns:
        float32 tensor `[..., 256]`.
    """
    pred = ops.convert_to_tensor(pred)
    num_mixtures = _num_mixtures(pred)
    # The likelihood is computed in float32 whatever the dtype of pred.
    pred = ops.cast(pred, "float32")
    logits, means, log_scales, coeffs = _split_params(pred, num_mixtures)
    x = ops.cast(previous, "float32") / 127.5 - 1.0
    x_r, x_g = x[..., 0], x[..., 1]
    bins = ops.arange(256, dtype="float32") / 127.5 - 1.0
    log_weights = ops.log_softmax(logits, axis=-1)
    tables = []
    for k in range(num_mixtures):
        mean, log_scale, coeff = means[..., k, :], log_scales[..., k, :], coeffs[..., k, :]
        weight = log_weights[..., k]
        for c in range(channel):
            weight = weight + _channel_log_prob(
                x[..., c], _channel_mean(mean, coeff, x_r, x_g, c), log_scale[..., c])
        table = _channel_log_prob(bins, _channel_mean(mean, coeff, x_r, x_g, channel)[..., None],
                                  log_scale[..., channel][..., None])
        tables.append(table + weight[..., None])
    return _logsumexp(tables)


def _channel_log_prob(x, mean, log_scale):
    """log-probability of the 8-bit bin at ``x`` under one logistic (float32, broadcasting)."""
    centered = x - mean
    inv_stdv = ops.exp(-log_scale)
    plus_in = inv_stdv * (centered + _HALF_BIN)
    min_in = inv_stdv * (centered - _HALF_BIN)
    mid_in = inv_stdv * centered
    # cdf_delta = sigmoid(plus_in) - sigmoid(min_in).  Above the mean it is computed as
    # sigmoid(-min_in) - sigmoid(-plus_in) (same value): two numbers near 0 instead of
    # near 1, so float32 does not lose the small difference to cancellation.
    sign = ops.where(mid_in > 0.0, -1.0, 1.0)
    cdf_delta = sign * (ops.sigmoid(sign * plus_in) - ops.sigmoid(sign * min_in))
    # log(sigmoid(plus_in)) = plus_in - softplus(plus_in), written as -softplus(-plus_in)
    # (same value, no cancellation for large plus_in): the value-0 edge.
    log_cdf_plus = -ops.softplus(-plus_in)
    # log(1 - sigmoid(min_in)): the value-255 edge.
    log_one_minus_cdf_min = -ops.softplus(min_in)
    # log density at the bin centre, for the mid-point approximation pdf * 2/255.
    log_pdf_mid = mid_in - log_scale - 2.0 * ops.softplus(mid_in)
    log_prob_interior = ops.where(
        cdf_delta > _MIN_CDF_DELTA,
        ops.log(ops.maximum(cdf_delta, 1e-12)),
        log_pdf_mid - _LOG_HALF_NUM_BINS,
    )
    return ops.where(
        x < -_EDGE,
        log_cdf_plus,
        ops.where(x > _EDGE, log_one_minus_cdf_min, log_prob_interior),
    )


def _logsumexp(terms):
    """Elementwise log(sum(exp(t) for t in terms)) of same-shaped finite tensors."""
    peak = terms[0]
    for term in terms[1:]:
        peak = ops.maximum(peak, term)
    # The shift cancels in value and gradient; stopping it keeps the gradient exactly softmax.
    peak = ops.stop_gradient(peak)
    total = ops.exp(terms[0] - peak)
    for term in terms[1:]:
        total = total + ops.exp(term - peak)
    return peak + ops.log(total)


def sample_discretized_mix_logistic(pred, seed, temperature=1.0):
    """Samples 8-bit RGB pixels from a discretized mixture of logistics.

    Per pixel: a component is drawn from ``softmax(logits / tau)`` (Gumbel-max),
    then the channels are drawn autoregressively from that component's
    logistics with scale ``exp(log_scale) * tau`` (i.e. ``log_scale + log tau``;
    the -7 floor applies to ``log_scale`` before the temperature)::

        R = clip(mean_R + s_R * n_R, -1, 1)
        G = clip(mean_G + c0 * R + s_G * n_G, -1, 1)
        B = clip(mean_B + c1 * R + c2 * G + s_B * n_B, -1, 1)
        pixel = round((channel + 1) * 127.5)

    with ``n = log(u) - log(1 - u)`` standard logistic noise.  As in T2T the
    continuous (clipped, not re-quantised) R/G samples condition G/B.

    Temperature: ``tau = 1`` samples the model; ``tau < 1`` sharpens both the
    component choice and the logistics; ``tau == 0`` takes the argmax
    component and its coefficient-adjusted mean with no noise.  ``tau`` may be
    a Python float or a scalar tensor (e.g. the input of a compiled sampler);
    ``tau == 0`` is handled with ``where`` and a guarded division, without
    Python branching on its value.  A negative tensor ``tau`` acts as 0.

    Randomness: one stateless uniform draw of shape ``[..., K + 3]`` from
    ``seed`` (see :func:`t2t_image.ops.categorical.stateless_uniform`); the same
    seed gives the same samples.

    Corresponds to T2T's ``common_layers.sample_from_discretized_mix_logistic``
    (plus temperature); Parmar et al. 2018, Sec. 3.2 and Sec. 5.

    Args:
        pred: float tensor ``[batch, h, w, 10 * K]`` (any float dtype).
        seed: int32/int64 tensor or tuple of shape ``[2]`` (stateless seed),
            or a Python int ``s`` meaning ``(s, 0)``.
        temperature: Python float >= 0 or float scalar tensor.

    Returns:
        int32 tensor ``[batch, h, w, 3]`` with values in ``0..255``.

    Raises:
        ValueError: for a bad ``pred`` shape, ``seed`` or ``temperature``.
    """
    pred = ops.convert_to_tensor(pred)
    num_mixtures = _num_mixtures(pred)
    tau = _as_temperature(temperature)
    # Sampling is computed in float32 whatever the dtype of pred.
    pred = ops.cast(pred, "float32")
    logits, means, log_scales, coeffs = _split_params(pred, num_mixtures)

    leading = tuple(ops.shape(pred)[:-1])
    noise = stateless_uniform(leading + (num_mixtures + 3,), seed)
    component = _tempered_gumbel_argmax(logits, noise[..., :num_mixtures], tau)
    select = ops.expand_dims(ops.one_hot(component, num_mixtures, dtype="float32"), -1)
    mean = ops.sum(means * select, axis=-2)  # [..., 3]
    log_scale = ops.sum(log_scales * select, axis=-2)
    coeff = ops.sum(coeffs * select, axis=-2)

    u = ops.clip(noise[..., num_mixtures:], _UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
    logistic = ops.log(u) - ops.log1p(-u)
    positive = tau > 0.0
    log_tau = ops.log(ops.where(positive, tau, 1.0))
    scale = ops.where(
        positive, ops.exp(ops.minimum(log_scale + log_tau, _MAX_SAMPLE_LOG_SCALE)), 0.0
    )
    x = mean + scale * logistic
    r = ops.clip(x[..., 0], -1.0, 1.0)
    g = ops.clip(x[..., 1] + coeff[..., 0] * r, -1.0, 1.0)
    b = ops.clip(x[..., 2] + coeff[..., 1] * r + coeff[..., 2] * g, -1.0, 1.0)
    pixels = ops.round((ops.stack([r, g, b], axis=-1) + 1.0) * 127.5)
    return ops.cast(ops.clip(pixels, 0.0, 255.0), "int32")
