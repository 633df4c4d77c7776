"""Accelerator benchmark under Keras's JAX backend: matmul peak, train-step MFU, sampling speed.

Needs only ``keras``, ``jax``, ``numpy`` and this repository (no TensorFlow is
imported on any path it runs), so it runs on a GPU machine that has JAX but no
TensorFlow. In one process, in this order (a time budget skips what is left,
with a note; a row that fails, e.g. out of memory, becomes an error row):

1. **Peak**: bf16 and f32 ``jnp.matmul`` rates measured in this run: for each
   size in ``--peak_sizes``, ``--peak_chain`` dependent n x n matmuls in one
   ``jax.jit``, best of ``--repeats`` timed calls after a warm-up call; the
   best size is the peak. f32 matmuls run at JAX's default matmul precision
   (``--f32_matmul_precision`` changes it for the peak and the models alike).
2. **Training step** (``t2t_image.training.jax_step.make_train_step``: the
   trainer's jitted stateless step with Keras Adam at T2T's betas/epsilon) of
   ``imagetransformer_cifar10_base`` (gin/experiments/cifar10_local1d_cat_12l_b256.gin:
   12 layers, d 512, FFN 2048, block 256, cat) and the paper's best DMOL model
   (gin/experiments/cifar10_local1d_dmol_14l.gin: 14 layers, d 256, 10
   logistics), with the architecture (dropout included) read from those gin
   files, in float32 and ``mixed_bfloat16``, at batch sizes 8, 32 and 128;
   random 32x32 images. Reported: seconds per step (mean of ``--steps``
   steps dispatched back to back after ``--warmup`` steps, compilation
   excluded and reported separately), images/s, model TFLOP per step (the
   formula of ``benchmarks/training.py``, ``flops.model_flops``), achieved
   TFLOP/s and MFU against the peak of the same precision.
3. **Cached sampling** (``t2t_image.sampling.sample``: one jitted
   ``while_loop`` over the 3,072 sub-pixels) of the 12-layer cat model with
   random weights, batch 64 and 256 at 32x32, bf16 and f32: images/s of a
   second call (the first, with compilation, is reported as well).
4. **Time per position at 32x32 vs 64x64**: the 12-layer cat model's
   training step (bf16, batch 8) and cached sampling (bf16, batch 64) at both
   sizes, divided by the positions (3,072 and 12,288 sub-pixels).

Prints one Markdown table at the end (progress lines before it start with
``#``) and writes every row, as it is measured, to ``--json``.

Usage (repository root)::

    python3 benchmarks/accelerator.py --json accelerator.json     # GPU: < 8 minutes
    python3 benchmarks/accelerator.py --tiny --json /tmp/a.json     # CPU smoke run, tiny sizes

See benchmarks/README.md for the command that runs it on a GPU machine
without TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import gc
import itertools
import json
import os
import pathlib
import platform
import re
import sys
import time
import traceback

if os.environ.get("KERAS_BACKEND", "jax") != "jax":
    sys.exit(f"benchmarks/accelerator.py runs under the JAX backend; unset KERAS_BACKEND "
             f"(got KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}).")
os.environ["KERAS_BACKEND"] = "jax"

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from flops import model_flops  # noqa: E402

GIN = REPO / "gin"
MODELS = {
    "cat 12l (cifar10_base)": "experiments/cifar10_local1d_cat_12l_b256.gin",
    "DMOL 14l (paper best)": "experiments/cifar10_local1d_dmol_14l.gin",
}
SAMPLING_MODEL = "cat 12l (cifar10_base)"
POLICIES = {"bf16": "mixed_bfloat16", "f32": "float32"}
TINY = dict(num_decoder_layers=1, hidden_size=32, filter_size=64, num_heads=2, key_channels=0,
            value_channels=0, block_length=32, image_height=8, image_width=8, num_mixtures=2)


# ------------------------------------------------------------------ models
def gin_model_config(path):
    """The ``t2t_image.ImageTransformer`` arguments an experiment gin file binds.

    Follows ``include`` lines (relative to gin/) and resolves ``%MACRO``
    values, the last assignment of a macro winning, as gin does; other
    configurables' bindings are ignored. Keeps the benchmark's models those of
    the gin files without importing gin's configurables.
    """
    macros, bindings = {}, {}

    def read(file):
        for raw in pathlib.Path(file).read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            include = re.fullmatch(r"include\s+['\"]([^'\"]+)['\"]", line)
            binding = re.fullmatch(r"t2t_image\.ImageTransformer\.(\w+)\s*=\s*(.+)", line)
            macro = re.fullmatch(r"([A-Z_][A-Z0-9_]*)\s*=\s*(.+)", line)
            if include:
                read(GIN / include.group(1))
            elif binding:
                bindings[binding.group(1)] = binding.group(2)
            elif macro:
                macros[macro.group(1)] = macro.group(2)

    def value(text):
        text = text.strip()
        if text.startswith("%"):
            return value(macros[text[1:]])
        return ast.literal_eval(text)

    read(GIN / path)
    return {name: value(text) for name, text in bindings.items()}


def model_config(name, tiny, size=None):
    cfg = gin_model_config(MODELS[name])
    if tiny:
        cfg.update(TINY)
    if size is not None:
        cfg.update(image_height=size, image_width=size)
    return cfg


def build_model(cfg, policy):
    """An ImageTransformer under ``policy`` (the global dtype policy is restored after)."""
    from t2t_image.models import ImageTransformer

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = ImageTransformer(**cfg)
        model({"targets": np.zeros((1, cfg["image_height"], cfg["image_width"], 3), np.int32)})
    finally:
        keras.config.set_dtype_policy(previous)
    return model


def _block(tree):
    jax.block_until_ready(tree)
    return tree


# -------------------------------------------------------------------- peak
def matmul_peak(dtype, sizes, chain, repeats):
    """Best matmul rate (FLOP/s) over ``sizes`` and the rate of each size."""
    rates = {}
    for n in sizes:
        key_a, key_b = jax.random.split(jax.random.PRNGKey(n))
        a = jax.random.normal(key_a, (n, n), dtype)
        b = (jax.random.normal(key_b, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)

        @jax.jit
        def chained(x, b):
            for _ in range(chain):  # dependent matmuls: nothing can be skipped
                x = jnp.matmul(x, b)
            return x[:1, :1].astype(jnp.float32).sum()

        _block(chained(a, b))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            _block(chained(a, b))
            best = min(best, time.perf_counter() - start)
        rates[n] = chain * 2.0 * n**3 / best
        del a, b
    return max(rates.values()), rates


# ---------------------------------------------------------- training steps
def time_train_step(cfg, policy, batch, steps, warmup):
    """Seconds per training step (mean over ``steps`` back-to-back steps) and compile time."""
    from t2t_image.training.jax_step import StepCounter
    from t2t_image.training.jax_step import make_train_step

    model = build_model(cfg, policy)
    # T2T's Adam settings (beta_2 0.98, epsilon 1e-9), as benchmarks/training.py.
    optimizer = keras.optimizers.Adam(learning_rate=1e-4, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
    optimizer.build(model.trainable_variables)
    shape = (batch, cfg["image_height"], cfg["image_width"], 3)
    targets = np.random.default_rng(0).integers(0, 256, shape, dtype=np.int32)
    num_dims = int(np.prod(shape[1:]))
    step = make_train_step(model, optimizer, StepCounter(), batch, num_dims)
    batches = itertools.repeat({"targets": jnp.asarray(targets)})
    start = time.perf_counter()
    loss = float(step(batches)["loss"])  # compilation + one step
    compile_s = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        loss = float(step(batches)["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        metrics = step(batches)
    loss = float(metrics["loss"])  # waits for the last step
    seconds = (time.perf_counter() - start) / steps
    if not np.isfinite(loss):
        raise FloatingPointError(f"loss is {loss}")
    return dict(seconds=seconds, compile_s=compile_s, loss=loss)


def time_sampling(cfg, policy, batch):
    """Seconds of a second ``sample`` call (the first includes compilation)."""
    from t2t_image.sampling import compiled
    from t2t_image.sampling import sample

    model = build_model(cfg, policy)
    try:
        start = time.perf_counter()
        sample(model, batch, seed=1)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        images = sample(model, batch, seed=2)
        seconds = time.perf_counter() - start
    finally:
        compiled._COMPILED.pop(model, None)  # its compiled loop holds the model
    assert images.shape == (batch, cfg["image_height"], cfg["image_width"], 3)
    return dict(seconds=seconds, compile_s=first_s - seconds)


# ------------------------------------------------------------------ driver
class Run:
    """Rows measured so far, the time budget, and the JSON file rewritten after each row."""

    def __init__(self, args):
        self.args, self.rows, self.start = args, [], time.perf_counter()
        self.header = dict(
            device=str(jax.devices()[0].device_kind), platform=jax.devices()[0].platform,
            num_devices=jax.device_count(), python=platform.python_version(),
            jax=jax.__version__, keras=keras.__version__, tiny=args.tiny,
            f32_matmul_precision=str(jax.config.jax_default_matmul_precision),
            budget_s=args.budget_s)

    def elapsed(self):
        return time.perf_counter() - self.start

    def measure(self, row, fn):
        """Runs ``fn()`` into ``row`` unless the budget is spent; errors become the row's note."""
        left = self.args.budget_s - self.elapsed()
        if left < self.args.row_reserve_s:
            row["skipped"] = (f"time budget: {max(left, 0):.0f} s of "
                              f"{self.args.budget_s:.0f} s left")
        else:
            try:
                row.update(fn())
            except Exception as error:  # noqa: BLE001 - one failed row must not end the run
                message = f"{type(error).__name__}: {error}".splitlines()[0][:160]
                row["error"] = message
                if self.args.traceback:
                    traceback.print_exc()
            gc.collect()
        self.rows.append(row)
        self.save()
        print(f"# {self.elapsed():6.1f} s  " + json.dumps(row, default=float), flush=True)
        return row

    def save(self):
        if not self.args.json:
            return
        path = pathlib.Path(self.args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dict(self.header, elapsed_s=self.elapsed(), rows=self.rows),
                                  indent=1, default=float), encoding="utf-8")
        tmp.replace(path)


def peak_of(run, precision):
    for row in run.rows:
        if row["part"] == "peak" and row["precision"] == precision and "flops" in row:
            return row["flops"]
    return None


def run_all(args):
    run = Run(args)
    tiny = args.tiny
    size = TINY["image_height"] if tiny else 32
    big = 2 * size
    for precision, dtype in (("bf16", jnp.bfloat16), ("f32", jnp.float32)):
        run.measure(dict(part="peak", precision=precision), lambda dtype=dtype: dict(zip(
            ("flops", "by_size"),
            matmul_peak(dtype, args.peak_sizes, args.peak_chain, args.repeats))))

    def train(name, precision, batch, image=size):
        cfg = model_config(name, tiny, image)
        row = dict(part="train", model=name, precision=precision, batch=batch, image=image,
                   positions=image * image * 3)

        def fn():
            result = time_train_step(cfg, POLICIES[precision], batch, args.steps, args.warmup)
            flops = model_flops(cfg, batch)
            result.update(images_per_s=batch / result["seconds"], model_flops=flops,
                          achieved=flops / result["seconds"])
            peak = peak_of(run, precision)
            if peak:
                result["mfu"] = result["achieved"] / peak
            return result

        return run.measure(row, fn)

    def sampling(precision, batch, image=size):
        cfg = model_config(SAMPLING_MODEL, tiny, image)
        row = dict(part="sample", model=SAMPLING_MODEL, precision=precision, batch=batch,
                   image=image, positions=image * image * 3)

        def fn():
            result = time_sampling(cfg, POLICIES[precision], batch)
            result["images_per_s"] = batch / result["seconds"]
            return result

        return run.measure(row, fn)

    # Most wanted first: the first precision's (bf16's) training of both models, its
    # sampling and the 64x64 points, then the other precision's rows.
    names = list(MODELS)
    first, *others = args.precisions
    for batch in args.batches:
        train(names[0], first, batch)
    for batch in args.sample_batches:
        sampling(first, batch)
    for batch in args.batches:
        train(names[1], first, batch)
    train(names[0], first, args.batches[0], image=big)
    sampling(first, args.sample_batches[0], image=big)
    for precision in others:
        for name in names:
            for batch in args.batches:
                train(name, precision, batch)
        for batch in args.sample_batches:
            sampling(precision, batch)
    return run


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def print_table(run):
    h = run.header
    print(f"# {h['device']} ({h['platform']}, {h['num_devices']} device(s)); python "
          f"{h['python']}, jax {h['jax']}, keras {h['keras']}; f32 matmul precision: "
          f"{h['f32_matmul_precision'].replace('None', 'JAX default (TF32 on recent GPUs)')}; "
          f"{run.elapsed():.0f} s in all")
    print("| part | model | precision | batch | image | s/step or s/batch | compile s "
          "| images/s | us/position | model TFLOP | achieved TFLOP/s | peak TFLOP/s | MFU "
          "| note |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: | --- |")
    for r in run.rows:
        note = r.get("error") or r.get("skipped") or ""
        peak = peak_of(run, r["precision"])
        if r["part"] == "peak":
            sizes = ", ".join(f"{n}: {v / 1e12:.1f}" for n, v in r.get("by_size", {}).items())
            print(f"| matmul peak | n x n (TFLOP/s by n: {sizes}) | {r['precision']} | | | | | | "
                  f"| | | {_fmt(r.get('flops', 0) / 1e12 or None, '.1f')} | | {note} |")
            continue
        # Training: step time / positions; sampling: batch time / positions (one loop step each).
        per_position = 1e6 * r["seconds"] / r["positions"] if "seconds" in r else None
        label = "train step" if r["part"] == "train" else "cached sampling"
        print(f"| {label} | {r['model']} | {r['precision']} | {r['batch']} | "
              f"{r['image']}x{r['image']} | {_fmt(r.get('seconds'), '.4f')} | "
              f"{_fmt(r.get('compile_s'), '.1f')} | {_fmt(r.get('images_per_s'), '.1f')} | "
              f"{_fmt(per_position, '.2f')} | {_fmt(r.get('model_flops', 0) / 1e12 or None, '.3f')}"
              f" | {_fmt(r.get('achieved', 0) / 1e12 or None, '.1f')} | "
              f"{_fmt(peak / 1e12 if peak and r['part'] == 'train' else None, '.1f')} | "
              f"{_fmt(100 * r['mfu'] if 'mfu' in r else None, '.1f')}{'%' if 'mfu' in r else ''}"
              f" | {note} |")


def summary(run):
    """Lines under the table: 64x64 vs 32x32 time per position, and the issue's goals."""
    lines = []
    for part in ("train", "sample"):
        points = {r["image"]: r["seconds"] / r["positions"] for r in run.rows
                  if r["part"] == part and r["model"] == SAMPLING_MODEL and "seconds" in r
                  and r["batch"] == (run.args.batches if part == "train"
                                     else run.args.sample_batches)[0]
                  and r["precision"] == run.args.precisions[0]}
        if len(points) == 2:
            small, big = sorted(points)
            lines.append(f"{part}: time per position at {big}x{big} is "
                         f"{points[big] / points[small]:.2f}x that at {small}x{small}")
    if run.args.tiny:
        return lines  # the goals are about the real models
    mfus = [r["mfu"] for r in run.rows if r["part"] == "train" and "mfu" in r
            and r["model"] == SAMPLING_MODEL and r["precision"] == "bf16"]
    if mfus:
        lines.append(f"goal: bf16 MFU of the 12-layer model >= 40% at its best batch size: "
                     f"{100 * max(mfus):.1f}%")
    rates = [r["images_per_s"] for r in run.rows if r["part"] == "sample" and "seconds" in r
             and r["image"] == 32]
    if rates:
        lines.append(f"goal: cached sampling >= 50 images/s at 32x32: best {max(rates):.1f}")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke run: 1-layer d=32 models on 8x8 images, tiny matmuls")
    parser.add_argument("--json", default="accelerator.json", help="results file ('' = none)")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="stop starting rows after this many seconds (default 420; tiny 300)")
    parser.add_argument("--row_reserve_s", type=float, default=None,
                        help="a row starts only with this many seconds of budget left "
                             "(default 40; tiny 0)")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "f32"], choices=list(POLICIES),
                        help="model precisions, the first one measured first and at 64x64 "
                             "(bf16: mixed_bfloat16); the matmul peak is always measured in both")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="training batch sizes (default 8 32 128; tiny 2)")
    parser.add_argument("--sample_batches", type=int, nargs="+", default=None,
                        help="sampling batch sizes (default 64 256; tiny 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps, compilation included")
    parser.add_argument("--peak_sizes", type=int, nargs="+", default=None,
                        help="matmul sizes n (default 4096 8192 16384; tiny 64 128)")
    parser.add_argument("--peak_chain", type=int, default=None,
                        help="dependent matmuls per timed call (default 8; tiny 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per peak size")
    parser.add_argument("--f32_matmul_precision", default=None,
                        choices=["default", "high", "highest"],
                        help="jax_default_matmul_precision for the whole run (default: JAX's)")
    parser.add_argument("--traceback", action="store_true", help="print failed rows' tracebacks")
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = dict(budget_s=(300.0, 420.0), row_reserve_s=(0.0, 40.0), batches=([2], [8, 32, 128]),
                    sample_batches=([2], [64, 256]), steps=(2, 10),
                    peak_sizes=([64, 128], [4096, 8192, 16384]), peak_chain=(2, 8))
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.f32_matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.f32_matmul_precision)
    run = run_all(args)
    print()
    print_table(run)
    for line in summary(run):
        print(f"# {line}")
    if args.json:
        print(f"# wrote {args.json}")
    return run


if __name__ == "__main__":
    main()
