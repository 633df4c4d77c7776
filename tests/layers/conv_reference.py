"""float64 NumPy references of the VQGAN convolution stack, built from the definitions."""

import numpy as np


def conv2d(x, kernel, bias, stride=1, pad=None):
    """Cross-correlation of NHWC ``x`` with an HWIO ``kernel``.

    ``pad`` is ((top, bottom), (left, right)); default: (k // 2, k // 2) per axis.
    """
    kh, kw = kernel.shape[:2]
    if pad is None:
        pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            window = x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride, :]
            out += window @ np.asarray(kernel[i, j], np.float64)
    return out + np.asarray(bias, np.float64)


def group_norm(x, groups, gamma, beta, eps):
    b, h, w, c = x.shape
    g = np.asarray(x, np.float64).reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(b, h, w, c) * gamma + beta


def silu(x):
    return x / (1.0 + np.exp(-x))


def weights(layer):
    return [np.asarray(v, np.float64) for v in layer.get_weights()]


def norm(layer, x):
    gamma, beta = weights(layer)
    return group_norm(x, layer.groups, gamma, beta, layer.epsilon)


def conv(layer, x, stride=1, pad=None):
    kernel, bias = weights(layer)
    return conv2d(x, kernel, bias, stride, pad)


def residual_block(block, x):
    h = conv(block.conv1, silu(norm(block.norm1, x)))
    h = conv(block.conv2, silu(norm(block.norm2, h)))
    skip = x if block.skip is None else conv(block.skip, x)
    return skip + h


def encoder(enc, x):
    """ConvEncoder forward; stride-2 convs pad only bottom/right, as Taming does."""
    x = conv(enc.conv_in, x)
    blocks = iter(enc.res_blocks)
    for level in range(len(enc.channel_multipliers)):
        for _ in range(enc.num_res_blocks):
            x = residual_block(next(blocks), x)
        if level < len(enc.channel_multipliers) - 1:
            x = conv(enc.downsamples[level], x, stride=2, pad=((0, 1), (0, 1)))
    return conv(enc.conv_out, silu(norm(enc.norm_out, x)))


def decoder(dec, x):
    """ConvDecoder forward with nearest-neighbour upsampling."""
    x = conv(dec.conv_in, x)
    blocks = iter(dec.res_blocks)
    ups = iter(dec.upsample_convs)
    for level in reversed(range(len(dec.channel_multipliers))):
        for _ in range(dec.num_res_blocks):
            x = residual_block(next(blocks), x)
        if level:
            x = x.repeat(2, axis=1).repeat(2, axis=2)
            x = conv(next(ups), x)
    return conv(dec.conv_out, silu(norm(dec.norm_out, x)))


def randomize(layer, seed=0, scale=0.3):
    """Gives every weight random values (norm gammas around 1) so that biases and betas matter."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        value = rng.normal(0.0, scale, tuple(v.shape))
        if v.path.endswith("gamma"):
            value += 1.0
        v.assign(value.astype("float32"))
