"""Model FLOPs of an Image Transformer training step (shared by the benchmark scripts).

No TensorFlow, Keras or JAX import: ``training.py`` (TensorFlow) and
``accelerator.py`` (JAX) count the same FLOPs. The formula is documented in
``training.py``'s module docstring ("Model FLOPs"): 3x the forward matmul
FLOPs per training step, attention counted over the in-image key slots each
query's block uses.
"""

import numpy as np


def _grid(cfg):
    rows = cfg.get("image_height", 32)
    cols = cfg.get("image_width", 32)
    if cfg.get("likelihood", "cat") == "cat":
        cols *= 3
    return rows, cols


def mean_keys_per_query(cfg):
    """K of the FLOP formula: in-image memory key slots per query, averaged."""
    rows, cols = _grid(cfg)
    length = rows * cols
    kind = cfg.get("dec_attention_type", "local_1d")
    if kind == "global":
        return float(length)
    if kind == "local_1d":
        bl = cfg.get("block_length", 256)
        if length < 2 * bl:  # one causal block over the whole sequence
            return float(length)
        keys = 0
        for start in range(0, length, bl):
            queries = min(bl, length - start)
            keys += queries * (min(start + bl, length) - max(start - bl, 0))
        return keys / length
    qh, qw = cfg.get("query_shape", (8, 16))
    f0, f1 = cfg.get("memory_flange", (8, 16))
    regions = []
    if f0:
        regions.append((-f0, f0, -f1, qw + 2 * f1))
    if f1:
        regions.append((0, qh, -f1, f1))
    regions.append((0, qh, 0, qw))
    keys = 0
    for br in range(0, rows, qh):
        for bc in range(0, cols, qw):
            queries = (min(br + qh, rows) - br) * (min(bc + qw, cols) - bc)
            in_image = 0
            for r0, nr, c0, nc in regions:
                r = np.arange(br + r0, br + r0 + nr)
                c = np.arange(bc + c0, bc + c0 + nc)
                in_image += int(((r >= 0) & (r < rows)).sum() * ((c >= 0) & (c < cols)).sum())
            keys += queries * in_image
    return keys / length


def model_flops(cfg, batch):
    """Model FLOPs of one training step (3x forward matmul FLOPs; see module doc)."""
    d, f = cfg["hidden_size"], cfg["filter_size"]
    ck = cfg.get("key_channels") or d
    cv = cfg.get("value_channels") or d
    n_out = 256 if cfg.get("likelihood", "cat") == "cat" else 10 * cfg.get("num_mixtures", 10)
    keys = mean_keys_per_query(cfg)
    per_layer = 2 * 2 * d * ck + 2 * d * cv + 2 * cv * d + 2 * 2 * d * f + 2 * keys * (ck + cv)
    rows, cols = _grid(cfg)
    forward = rows * cols * (cfg["num_decoder_layers"] * per_layer + 2 * d * n_out)
    return 3.0 * batch * forward
