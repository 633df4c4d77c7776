"""Training-step speed of the Image Transformer: matmul peak, MFU and scaling.

Three parts in float32 on whatever device TensorFlow picks, and a precision table:

1. **Peak**: the dense float32 and bfloat16 matmul rates of this machine, measured
   in this process several ways (a ``tf.function`` chain and an eager loop, at
   ``--peak_sizes`` 1024, 2048 and 4096); the best is the peak MFU is taken against
   (issue 15: a single chained-``tf.function`` figure understated the machine).
2. **Training step** of the three configurations of issue 7 (2 decoder layers,
   batch 4, 32x32x3 images, random weights and random images):

   * ``cat 1D-local``: categorical, d=512, filter 2048, 4 heads,
     block_length 256 (the cifar10_base block with fewer layers);
   * ``DMOL 1D-local``: discretized mixture of 10 logistics, d=256, filter 512,
     8 heads, key/value channels 512, block_length 256;
   * ``cat 2D-local``: as cat 1D-local but ``local_2d`` with query_shape (8, 16)
     and memory_flange (8, 32).

   The step is built like ``t2t_image.training.Trainer``'s: the loss (mean NLL
   per dimension) and its gradients in a ``tf.function(jit_compile=...)``, then
   Adam (T2T betas/epsilon) applies them in an outer ``tf.function``. Warm-up
   steps (tracing, XLA compilation) are excluded; the median step time over
   ``--steps`` timed steps is reported (XLA; ``--no_xla_too`` adds the same
   without XLA). Reported: steps/s, images/s, model TFLOP per step and model
   FLOP utilization (MFU) = model FLOPs per step / (step time * peak), where
   peak is the higher of two peak measurements taken right before and right
   after that row (the shared machine's matmul rate drifts between about 50
   and 115 GFLOP/s within minutes, so a peak from another moment would make the
   MFU meaningless).
3. **Scaling**: time per position and peak memory per position of a training
   step (XLA) at 16x16, 32x32 and 64x64 images for ``local_1d``, ``local_2d``
   and ``global`` attention, on a smaller categorical model (d=256, filter 1024,
   4 heads, 2 layers, batch 1; local_1d block_length 256, local_2d query_shape
   (8, 16) and memory_flange (8, 32)). Each point runs in a fresh subprocess so
   that its memory high-water mark is its own. Global attention at 64x64
   (12,288 positions) is skipped by default: its float32 attention matrices alone
   are 12288^2 * 4 heads * 4 B = 2.4 GB per tensor, several of which are live per
   layer in the backward pass (about 10-15 GB for 2 layers), more than a shared
   23 GB machine can safely give; ``--global_64`` runs it anyway.

Model FLOPs (counted by ``model_flops``): 3x the forward matmul FLOPs (forward
+ two backward matmuls per forward matmul), where one multiply-add is 2 FLOPs.
Per position of the position grid (sub-pixels for cat, pixels for DMOL), with
d = hidden size, f = filter size, c_k / c_v = key / value channels, and per
decoder layer::

    q, k projections   2 * 2 * d * c_k
    v projection       2 * d * c_v
    output projection  2 * c_v * d
    FFN                2 * 2 * d * f
    attention          2 * K * c_k (scores) + 2 * K * c_v (weighted sum)

plus the output layer 2 * d * n_out (n_out = 256 logits for cat, 10 * mixtures
for DMOL). K is the number of keys the query's block actually uses, averaged
over the positions: the key slots of its memory that lie inside the image
(local_1d: the previous and the current block, only the current block for block
0; local_2d: the in-image part of the top strip, the left flange and the whole
query block; global: the whole sequence). The causal triangle inside the query
block is counted whole (a batched block matmul computes it); key slots outside
the image, padding and cross-block masks are not counted, so work wasted on
them lowers the MFU. Embeddings, layer norm, softmax and the loss are not
counted (they are not matmuls).

Scaling time is also reported normalised to a 100 GFLOP/s matmul peak (time x
the peak measured right after the point, in the same process, / 100 GFLOP/s),
and the "vs previous size" ratios use the normalised time, because the shared
machine's speed drifts about 2x within minutes.

Peak memory: the process's resident-set high-water mark (``VmHWM``) minus
its RSS after building the model, the optimizer and the input batch (so the
weights, the Adam slots and TensorFlow's own footprint are excluded but XLA
compilation is included). ``tf.config.experimental.get_memory_info`` is used
instead on a GPU; it does not support the CPU device.

**Precision and compilation** (``--compare_precisions``): float32 and
mixed_bfloat16, each with and without XLA, of the same model, built once and timed
with their steps interleaved round by round; each row gives its speed-up over the
float32 XLA step as the median of the per-round ratios (robust to load changes on a
shared machine), model GFLOP/s, and MFU against the best peak of its compute dtype.

Usage (from the repository root)::

    python3 benchmarks/training.py                    # everything, ~10 min on 2 cores
    python3 benchmarks/training.py --skip_scaling     # peak + the three configurations
    python3 benchmarks/training.py --skip_configs --sizes 16 32
    python3 benchmarks/training.py --compare_precisions --steps 5   # peaks + precisions

Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_util import cpu_model as _cpu_model  # noqa: E402
from flops import mean_keys_per_query, model_flops  # noqa: E402,F401

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# ---------------------------------------------------------------- configs
BASE = dict(image_height=32, image_width=32, num_decoder_layers=2)
CONFIGS = {
    "cat 1D-local": dict(BASE, hidden_size=512, filter_size=2048, num_heads=4,
                         dec_attention_type="local_1d", block_length=256, likelihood="cat"),
    "DMOL 1D-local": dict(BASE, hidden_size=256, filter_size=512, num_heads=8,
                          key_channels=512, value_channels=512, dec_attention_type="local_1d",
                          block_length=256, likelihood="dmol", num_mixtures=10),
    "cat 2D-local": dict(BASE, hidden_size=512, filter_size=2048, num_heads=4,
                         dec_attention_type="local_2d", query_shape=(8, 16),
                         memory_flange=(8, 32), likelihood="cat"),
}
TARGETS = {"cat 1D-local": 0.60, "DMOL 1D-local": 0.50, "cat 2D-local": 0.50}
SCALING_MODEL = dict(hidden_size=256, filter_size=1024, num_heads=4, num_decoder_layers=2,
                     block_length=256, query_shape=(8, 16), memory_flange=(8, 32),
                     likelihood="cat")


def _on_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


# ------------------------------------------------------------------- peak
def measure_peak(n=2048, chain=8, repeats=5):
    """Dense float32 matmul rate (FLOP/s): median over ``repeats`` timed calls."""
    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2) / np.sqrt(n)

    @tf.function
    def chained(x):
        for _ in range(chain):  # dependent matmuls: nothing can be skipped
            x = tf.matmul(x, b)
        return tf.reduce_sum(x[:1, :1])

    chained(a).numpy()  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        chained(a).numpy()
        times.append(time.perf_counter() - start)
    return chain * 2.0 * n**3 / statistics.median(times)


def measure_peak_ways(dtype="float32", sizes=(1024, 2048, 4096), repeats=3):
    """The best matmul rate of several ways (issue 15's "honest peak").

    For each size n: a ``tf.function`` chaining dependent n x n matmuls, the same
    compiled with XLA, and an eager Python loop of the same matmuls, each call doing about 137 GFLOP (8 matmuls of
    2048^2; 64 of 1024^2, 1 of 4096^2); the best of ``repeats`` calls after a warm-up.
    Returns (best FLOP/s, {f"{way} {n}": FLOP/s}).
    """
    rates = {}
    for n in sizes:
        count = max(1, round(8 * (2048 / n) ** 3))
        a = tf.cast(tf.random.normal((n, n), seed=1), dtype)
        b = tf.cast(tf.random.normal((n, n), seed=2) / np.sqrt(n), dtype)

        def eager(x):
            for _ in range(count):
                x = tf.matmul(x, b)
            return x[:1, :1]

        # "xla chain" shows what XLA:CPU makes of the same matmuls (bfloat16: no oneDNN).
        for way, fn in (("chain", tf.function(eager)), ("eager", eager),
                        ("xla chain", tf.function(eager, jit_compile=True))):
            fn(a).numpy()  # warm-up (tracing, oneDNN primitive creation)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                fn(a).numpy()
                best = min(best, time.perf_counter() - start)
            rates[f"{way} {n}"] = count * 2.0 * n**3 / best
    return max(rates.values()), rates


# ----------------------------------------------------------- training step
def make_model(cfg, precision="float32"):
    from t2t_image.models import ImageTransformer

    return ImageTransformer(dtype=precision, **cfg)


def build_train_step(model, jit_compile, num_dims, batch):
    """The trainer's step without tf.distribute: XLA grads + Adam apply."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate=1e-4, beta_1=0.9, beta_2=0.98,
                                      epsilon=1e-9)
    optimizer.build(model.trainable_variables)

    def compute_gradients(features):
        with tf.GradientTape() as tape:
            nll = -model.log_prob_from_logits(model(features, training=True),
                                              features["targets"])
            loss = tf.nn.compute_average_loss(nll / num_dims, global_batch_size=batch)
        return tape.gradient(loss, model.trainable_variables), loss

    compute_gradients = tf.function(compute_gradients, jit_compile=jit_compile)

    @tf.function
    def train_step(features):
        grads, loss = compute_gradients(features)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return train_step


def _features(cfg, batch, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.get("image_height", 32), cfg.get("image_width", 32), 3)
    return {"targets": tf.constant(rng.integers(0, 256, shape, dtype=np.int32))}


def _rss_bytes():
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes():
    """The process's RSS high-water mark (VmHWM; unlike ru_maxrss, reset by exec)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compare_precisions(cfg, batch, steps, variants, warmup=2):
    """Seconds per step of ``variants`` [(precision, jit)] of one model, steps interleaved.

    All variants are built and warmed up first; then each round times one step of
    every variant in turn, so a change in machine load hits them all alike. Returns
    {variant: [seconds per round]}.
    """
    steps_fns = {}
    features = _features(cfg, batch)
    num_dims = int(np.prod(features["targets"].shape[1:]))
    for precision, jit in variants:
        model = make_model(cfg, precision)
        model({"targets": features["targets"][:1]})
        step = build_train_step(model, jit, num_dims, batch)
        for _ in range(warmup):
            float(step(features))
        steps_fns[(precision, jit)] = step
    times = {v: [] for v in variants}
    for _ in range(steps):
        for v, step in steps_fns.items():
            start = time.perf_counter()
            float(step(features))
            times[v].append(time.perf_counter() - start)
    return times


def run_compare(steps, names, peaks):
    """The precision/compilation table: ratios to the float32 XLA step, interleaved."""
    variants = [("float32", True), ("float32", False), ("mixed_bfloat16", False),
                ("mixed_bfloat16", True)]
    print(f"Precision and compilation, batch 4, 2 layers; {steps} interleaved rounds; "
          f"speed-up = median over rounds of (float32 XLA step time / this step time in "
          f"the same round); MFU against the best matmul peak of the compute dtype "
          f"(float32 {peaks['float32'] / 1e9:.0f}, bfloat16 {peaks['bfloat16'] / 1e9:.0f} "
          f"GFLOP/s); 1-minute load average before: {os.getloadavg()[0]:.2f}")
    print()
    print("| configuration | precision | XLA | s/step (median) | speed-up vs float32 XLA "
          "| model GFLOP/s | MFU |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    rows = []
    for name, cfg in CONFIGS.items():
        if names and name not in names:
            continue
        flops = model_flops(cfg, 4)
        times = compare_precisions(cfg, 4, steps, variants)
        base = times[("float32", True)]
        for (precision, jit), ts in times.items():
            sec = statistics.median(ts)
            speedup = statistics.median(b / t for b, t in zip(base, ts))
            peak = peaks["bfloat16" if precision == "mixed_bfloat16" else "float32"]
            rows.append(dict(name=name, precision=precision, jit=jit, seconds=sec, times=ts,
                             speedup=speedup, flops=flops, mfu=flops / sec / peak))
            print(f"| {name} | {precision} | {'yes' if jit else 'no'} | {sec:.2f} | "
                  f"{speedup:.2f}x | {flops / sec / 1e9:.1f} | {100 * flops / sec / peak:.0f}% |",
                  flush=True)
    print(f"# 1-minute load average after: {os.getloadavg()[0]:.2f}")
    return rows


def time_training(cfg, batch, jit_compile, steps, warmup=1):
    """Median seconds per training step (warm-up excluded) and peak memory bytes."""
    model = make_model(cfg)
    features = _features(cfg, batch)
    model({"targets": features["targets"][:1]})
    num_dims = int(np.prod(features["targets"].shape[1:]))
    step = build_train_step(model, jit_compile, num_dims, batch)
    if _on_gpu():
        tf.config.experimental.reset_memory_stats("GPU:0")
    base_rss = _rss_bytes()
    for _ in range(warmup):
        float(step(features))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(step(features))  # float() waits for the step
        times.append(time.perf_counter() - start)
    if _on_gpu():
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    else:
        peak = _hwm_bytes() - base_rss
    return statistics.median(times), times, peak


# ------------------------------------------------------------------ tables
def run_configs(peak, steps, jit_modes, names=None):
    """Times the issue's three configurations; returns a list of result dicts."""
    rows = []
    for name, cfg in CONFIGS.items():
        if names and name not in names:
            continue
        flops = model_flops(cfg, 4)
        for jit in jit_modes:
            before = measure_peak(repeats=3)
            sec, times, _ = time_training(cfg, 4, jit, steps)
            after = measure_peak(repeats=3)
            # The shared machine's matmul rate drifts (other jobs, clocks): MFU is
            # taken against the higher of the peaks measured right before and
            # after this measurement (the conservative choice).
            local_peak = max(before, after, peak)  # and the best of several ways
            rows.append(dict(name=name, jit=jit, seconds=sec, times=times, flops=flops,
                             peak=local_peak, peaks=(before, after),
                             mfu=flops / sec / local_peak, target=TARGETS[name],
                             keys=mean_keys_per_query(cfg)))
    return rows


def print_configs(rows, peak):
    print("Training step, batch 4, 2 layers, float32; MFU against the highest of the best "
          "float32 matmul peak at the start and the peaks measured just before and after each "
          "row")
    print()
    print("| configuration | XLA | s/step (median) | steps/s | images/s | model TFLOP/step "
          "| achieved GFLOP/s | peak GFLOP/s (before/after) | MFU | target |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['name']} | {'yes' if r['jit'] else 'no'} | {r['seconds']:.2f} | "
              f"{1 / r['seconds']:.3f} | {4 / r['seconds']:.2f} | {r['flops'] / 1e12:.3f} | "
              f"{r['flops'] / r['seconds'] / 1e9:.1f} | {r['peaks'][0] / 1e9:.0f}/"
              f"{r['peaks'][1] / 1e9:.0f} | {100 * r['mfu']:.0f}% | {100 * r['target']:.0f}% |",
              flush=True)


def scaling_point(attention, size, steps):
    """One scaling measurement (run in its own process); returns a dict."""
    cfg = dict(SCALING_MODEL, image_height=size, image_width=size, dec_attention_type=attention)
    sec, times, peak = time_training(cfg, 1, True, steps)
    matmul_peak = measure_peak(repeats=3)  # after the memory high-water mark was read
    positions = size * size * 3
    return dict(attention=attention, size=size, positions=positions, seconds=sec, times=times,
                peak_bytes=peak, flops=model_flops(cfg, 1), matmul_peak=matmul_peak)


def run_scaling(attentions, sizes, steps, global_64):
    results = []
    for attention in attentions:
        for size in sizes:
            if attention == "global" and size >= 64 and not global_64:
                results.append(dict(attention=attention, size=size, skipped=True))
                continue
            proc = subprocess.run(
                [sys.executable, __file__, "--_scaling_point", attention, str(size),
                 "--steps", str(steps)],
                capture_output=True, text=True, check=False)
            if proc.returncode:
                results.append(dict(attention=attention, size=size, error=proc.stderr[-300:]))
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def print_scaling(results, peak):
    print("Scaling: training step (XLA), cat, d=256, filter 1024, 4 heads, 2 layers, batch 1")
    print()
    print("| attention | image | positions | s/step | us/position | matmul peak GFLOP/s "
          "| us/position at 100 GFLOP/s peak | vs previous size | peak MB | KB/position "
          "| vs previous size | model GFLOP/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    prev = {}
    for r in results:
        label = f"{r['size']}x{r['size']}x3"
        if r.get("skipped"):
            print(f"| {r['attention']} | {label} | {r['size'] ** 2 * 3:,} | not run (memory, see "
                  f"docstring) |" + " |" * 8)
            continue
        if r.get("error"):
            print(f"| {r['attention']} | {label} | failed: {r['error'].splitlines()[-1]} |"
                  + " |" * 9)
            continue
        # Time per position in units of 100 GFLOP/s-seconds: the shared machine's
        # speed drifts ~2x within minutes, so each point is normalised by the
        # matmul peak measured right after it in the same process.
        t_pos = r["seconds"] / r["positions"] * r["matmul_peak"] / 100e9
        m_pos = r["peak_bytes"] / r["positions"]
        p = prev.get(r["attention"])
        t_ratio = f"{t_pos / p[0]:.2f}x" if p else ""
        m_ratio = f"{m_pos / p[1]:.2f}x" if p else ""
        prev[r["attention"]] = (t_pos, m_pos)
        print(f"| {r['attention']} | {label} | {r['positions']:,} | {r['seconds']:.3f} | "
              f"{1e6 * r['seconds'] / r['positions']:.1f} | {r['matmul_peak'] / 1e9:.0f} | "
              f"{1e6 * t_pos:.1f} | {t_ratio} | {r['peak_bytes'] / 2**20:.0f} | "
              f"{m_pos / 1024:.1f} | {m_ratio} | {r['flops'] / r['seconds'] / 1e9:.1f} |",
              flush=True)


def main(argv=None):
    """Runs the benchmark and prints Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the peak")
    parser.add_argument("--peak_chain", type=int, default=8)
    parser.add_argument("--no_xla_too", action="store_true",
                        help="also time the configurations without XLA")
    parser.add_argument("--configs", nargs="*", default=None, choices=list(CONFIGS))
    parser.add_argument("--skip_configs", action="store_true")
    parser.add_argument("--skip_scaling", action="store_true")
    parser.add_argument("--attentions", nargs="+", default=["local_1d", "local_2d", "global"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--global_64", action="store_true")
    parser.add_argument("--compare_precisions", action="store_true",
                        help="only the best matmul peaks (float32 and bfloat16, several ways) "
                             "and the interleaved precision/compilation table")
    parser.add_argument("--peak_sizes", nargs="+", type=int, default=[1024, 2048, 4096])
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    parser.add_argument("--_scaling_point", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._scaling_point:
        print(json.dumps(scaling_point(args._scaling_point[0], int(args._scaling_point[1]),
                                       args.steps)))
        return None

    device = "GPU" if _on_gpu() else f"{_cpu_model()}, {os.cpu_count()} logical CPUs"
    print(f"# {device}; python {platform.python_version()}, tensorflow {tf.__version__}; "
          f"1-minute load average before: {os.getloadavg()[0]:.2f}")
    peaks = {}
    for dtype in ("float32", "bfloat16"):
        peaks[dtype], ways = measure_peak_ways(dtype, args.peak_sizes)
        print(f"# {dtype} matmul peak: {peaks[dtype] / 1e9:.1f} GFLOP/s, the best of: "
              + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in ways.items()), flush=True)
    if args.compare_precisions:
        print()
        out = dict(peaks=peaks, compare=run_compare(args.steps, args.configs, peaks))
        if args.json:
            print(json.dumps(out, default=str))
        return out
    peak = peaks["float32"]
    print()
    out = dict(peak=peak, peaks=peaks)
    if not args.skip_configs:
        jit_modes = (True, False) if args.no_xla_too else (True,)
        rows = run_configs(peak, args.steps, jit_modes, args.configs)
        print_configs(rows, peak)
        print()
        out["configs"] = rows
    if not args.skip_scaling:
        results = run_scaling(args.attentions, args.sizes, args.steps, args.global_64)
        print_scaling(results, peak)
        print()
        out["scaling"] = results
    peak_after = measure_peak(chain=args.peak_chain, repeats=args.repeats)
    out["peak_after"] = peak_after
    print(f"# peak again at the end: {peak_after / 1e9:.1f} GFLOP/s; 1-minute load average "
          f"after: {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":
    main()
