"""Scale-32 studies of ``experiments/reproduce.py --scale=32``: the shipped presets' setting.

Every CIFAR-10 run is ``gin/presets/cifar10_32_uncond.gin`` (32x32, 1D local, categorical,
d 128, filter 256, 4 heads, 4 layers, batch 8, mixed_bfloat16, learning rate 0.2, warm-up
400) with the schedule of this study (1,000 steps, evaluation every 250 on the whole
held-out split) and one thing changed. Finished runs are read, never retrained, with
``--reuse NAME=RUN_DIR``: the curve from their eval TensorBoard events, the wall time from
their train/ events (first to last), the command from command.txt; their
operative_config.gin is checked against the intended setting (schedule aside). Runs are
compared at the last evaluation step they all share. Results go to
``<out>/reproduction32.md`` and ``<out>/reproduction32/<study>.json``.
"""

import glob
import json
import os
import re
import time

import reproduce as R

PRESET = "gin/presets/cifar10_32_uncond.gin"
SR_PRESET = "gin/presets/celeba_sr_8_32.gin"
CELEBA = os.path.join(R.REPO, "..", "shared", "data", "celeba",
                      "celeba_train9000_32x32_8x8.npz")
STUDIES = ("block_length", "conditional", "cat_vs_dmol", "local_1d_vs_2d", "super_resolution",
           "two_stage")
# Names --reuse accepts; a run also takes the reuse of its aliases (block256 is the preset).
REUSE_NAMES = ("block256", "block64", "unconditional", "conditional", "cat", "dmol", "local_1d",
               "local_2d", "img2img", "first_stage", "prior")
PRESET_ALIASES = ("block256",)
# Trainer parameters a reused run may set differently: its schedule, not its model.
SCHEDULE = ("num_train_steps", "eval_every", "checkpoint_every", "log_every",
            "keep_checkpoints", "sample_every", "num_samples")
DMOL_BLOCK = 85  # pixels: the image area of the categorical block of 256 sub-pixels (256 / 3)
QUERY_2D, FLANGE_2D = (8, 32), (4, 8)  # see SETUP['local_1d_vs_2d']


def settings(smoke):
    """The study's schedule; smoke: an 8x8, 1-layer d-16 model for 4 steps (seconds)."""
    if smoke:
        return dict(image_size=8, steps=4, eval_every=2, eval_batches=2, sr_count=2,
                    num_class_samples=1, seeds=(0,))
    return dict(image_size=32, steps=1000, eval_every=250, eval_batches=None, sr_count=50,
                num_class_samples=4, seeds=(0,))


def schedule_bindings(s, smoke, model="ImageTransformer"):
    out = [f"t2t_image.Trainer.num_train_steps = {s['steps']}",
           f"t2t_image.Trainer.eval_every = {s['eval_every']}",
           f"t2t_image.Trainer.checkpoint_every = {s['steps']}",
           f"t2t_image.Trainer.log_every = {min(50, s['eval_every'])}"]
    if smoke or model == "ImageTransformer":  # the SR preset keeps its 32 evaluation batches
        out.append(f"t2t_image.Trainer.eval_batches = {s['eval_batches']}")
    if smoke:
        out += [f"t2t_image.{model}.hidden_size = 16", f"t2t_image.{model}.filter_size = 32",
                f"t2t_image.{model}.num_heads = 2", f"t2t_image.{model}.num_decoder_layers = 1"]
    if smoke and model == "ImageTransformer":
        size = s["image_size"]
        out += [f"t2t_image.ImageTransformer.image_height = {size}",
                f"t2t_image.ImageTransformer.image_width = {size}",
                f"train/t2t_image.make_dataset.image_size = {size}",
                f"eval/t2t_image.make_dataset.image_size = {size}"]
    if smoke and model == "Img2ImgTransformer":
        out += ["t2t_image.Img2ImgTransformer.num_encoder_layers = 1"]
    return out


def cifar_bindings(smoke, changes=()):
    """Bindings of a scale-32 CIFAR-10 run: the preset's, the study's schedule, ``changes``."""
    return schedule_bindings(settings(smoke), smoke) + list(changes)


# ------------------------------------------------------------- reused runs
def gin_values(text):
    """{selector.param: value} of a gin config text, macros resolved, whitespace dropped."""
    entries, key = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if " = " in line and not line[0].isspace():
            key, value = (part.strip() for part in line.split(" = ", 1))
            entries[key] = value
        elif key:
            entries[key] += line.strip()
    clean = {k: re.sub(r"\s+|\\", "", v) for k, v in entries.items()}
    macros = {k: v for k, v in clean.items() if "." not in k}
    return {k: macros.get(v[1:], v) if v.startswith("%") else v
            for k, v in clean.items() if "." in k}


def config_difference(run_dir, gin_files, bindings):
    """'' if run_dir's operative config has the intended setting (schedule aside), else why."""
    import gin

    from t2t_image.cli.gin_utils import parse_gin

    path = os.path.join(run_dir, "operative_config.gin")
    if not os.path.isfile(path):
        return "has no operative_config.gin, its setting is unchecked"
    gin.clear_config()
    try:
        parse_gin(gin_files, bindings)
        intended = gin_values(gin.config_str())
    finally:
        gin.clear_config()
    with open(path) as f:
        actual = gin_values(f.read())
    diffs = []
    for key, value in sorted(intended.items()):
        if key.split(".")[-2].endswith("Trainer") and key.split(".")[-1] in SCHEDULE:
            continue
        found = {v for k, v in actual.items() if k == key or k.endswith("/" + key)}
        if found and found != {value}:
            diffs.append(f"{key} = {'/'.join(sorted(found))} (intended {value})")
    return ("differs from the intended setting in " + "; ".join(diffs)) if diffs else ""


def train_wall_time(run_dir):
    """(first-to-last seconds of the train/ events, the same summed per trainer process)."""
    import tensorflow as tf

    spans = {}
    for path in glob.glob(os.path.join(run_dir, "train", "events.out.tfevents.*")):
        process = os.path.basename(path).split(".")[-3]  # events.out.tfevents.T.HOST.PID.N.v2
        for event in tf.compat.v1.train.summary_iterator(path):
            lo, hi = spans.get(process, (event.wall_time, event.wall_time))
            spans[process] = (min(lo, event.wall_time), max(hi, event.wall_time))
    if not spans:
        return None, None
    first = min(lo for lo, _ in spans.values())
    last = max(hi for _, hi in spans.values())
    return last - first, sum(hi - lo for lo, hi in spans.values())


def read_run(name, run_dir, curve_split="eval"):
    """A finished run as a study run: curve, wall time and command, nothing retrained."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"--reuse {name}={run_dir}: no such folder.")
    curve = R.read_scalars(run_dir, curve_split, "bits_per_dim")
    seconds, active = train_wall_time(run_dir)
    command_path = os.path.join(run_dir, "command.txt")
    command = open(command_path).read().strip() if os.path.isfile(command_path) else None
    return {"name": name, "seed": 0, "run_dir": run_dir, "curve": curve, "seconds": seconds,
            "seconds_without_gaps": active, "command": command, "reused": True,
            "final_bits_per_dim": curve[-1][1] if curve else None}


def get_run(ctx, name, gin_files, bindings, aliases=()):
    """The study's run ``name``: read from --reuse (name or an alias) or trained."""
    for key in (name,) + tuple(aliases):
        if key in ctx.reuse:
            run = read_run(name, ctx.reuse[key])
            if not run["curve"]:
                raise ValueError(f"--reuse {key}={ctx.reuse[key]}: no eval bits_per_dim "
                                 "events under its eval/ folder.")
            warning = config_difference(ctx.reuse[key], gin_files, bindings)
            if warning:
                line = f"WARNING: --reuse {key}={ctx.reuse[key]} {warning}"
                print(line, flush=True)
                ctx.warnings.append(line)
            return run
    run_dir = os.path.join(ctx.work_dir, ctx.study, name)
    timing = R.run_trainer(run_dir, gin_files, bindings)
    curve = R.read_scalars(run_dir, "eval", "bits_per_dim")
    return {"name": name, "seed": 0, "run_dir": run_dir, "curve": curve,
            "seconds": timing["seconds"], "command": timing["command"], "reused": False,
            "final_bits_per_dim": curve[-1][1]}


def cifar_run(ctx, name, changes=(), aliases=()):
    return get_run(ctx, name, [PRESET], cifar_bindings(ctx.smoke, changes), aliases)


# ------------------------------------------------------------- summaries
def slope_per_1000(curve):
    """Bits/dim per 1,000 steps over a curve's last two evaluations (None with fewer)."""
    if len(curve) < 2:
        return None
    (s0, v0), (s1, v1) = curve[-2], curve[-1]
    return 1000.0 * (v1 - v0) / (s1 - s0)


def summarise(runs):
    """Per run: bits/dim at the last step all runs share, own last value, last slope."""
    shared = set.intersection(*(set(s for s, _ in r["curve"]) for r in runs)) if runs else set()
    step = max(shared) if shared else None
    groups = {}
    for r in runs:
        values = dict(r["curve"])
        groups[r["name"]] = {"mean": values[step] if step is not None else None,
                             "values": [values[step]] if step is not None else [],
                             "last_step": r["curve"][-1][0], "last": r["curve"][-1][1],
                             "slope_per_1000": slope_per_1000(r["curve"]),
                             "seconds": r.get("seconds"), "reused": r.get("reused", False),
                             "seconds_without_gaps": r.get("seconds_without_gaps")}
    return {"shared_step": step, "groups": groups}


def finish(ctx, runs, **extra):
    ctx.plot_curves(ctx.study, runs, key=lambda r: r["name"])
    return dict(runs=runs, **summarise(runs), warnings=ctx.warnings, **extra)


# -------------------------------------------------------------- studies
def study_block_length(ctx):
    """Table 4 at 32x32: 1D local blocks of 64 and 256 sub-pixels (256 = the preset)."""
    runs = [cifar_run(ctx, "block64", ["t2t_image.ImageTransformer.block_length = 64"]),
            cifar_run(ctx, "block256")]
    return finish(ctx, runs)


def study_conditional(ctx):
    """Class-conditional vs unconditional (the preset), per-class samples."""
    runs = [cifar_run(ctx, "unconditional", aliases=PRESET_ALIASES),
            cifar_run(ctx, "conditional", ['TASK = "class_conditional"',
                                           "t2t_image.ImageTransformer.num_classes = 10"])]
    grid = R.class_samples_grid(ctx, runs[1]["run_dir"])
    return finish(ctx, runs, samples_grid=grid)


def study_cat_vs_dmol(ctx):
    """Categorical (the preset) vs DMOL with the parameter count matched through the FFN."""
    size = ctx.s["image_size"]
    smoke = dict(hidden_size=16, num_heads=2, num_decoder_layers=1) if ctx.smoke else {}
    common = dict(dict(image_height=size, image_width=size, hidden_size=128, num_heads=4,
                       num_decoder_layers=4), **smoke)
    cat_filter = 32 if ctx.smoke else 256
    cat_params = R.count_params(dict(common, filter_size=cat_filter, block_length=256))
    dmol = dict(common, likelihood="dmol", block_length=DMOL_BLOCK)
    base = R.count_params(dict(dmol, filter_size=1))
    per_unit = R.count_params(dict(dmol, filter_size=2)) - base
    dmol_filter = max(1, round((cat_params - base) / per_unit) + 1)
    dmol_params = R.count_params(dict(dmol, filter_size=dmol_filter))
    runs = [cifar_run(ctx, "cat", aliases=PRESET_ALIASES),
            cifar_run(ctx, "dmol", ['t2t_image.ImageTransformer.likelihood = "dmol"',
                                    f"t2t_image.ImageTransformer.block_length = {DMOL_BLOCK}",
                                    f"t2t_image.ImageTransformer.filter_size = {dmol_filter}",
                                    "t2t_image.ImageTransformer.num_mixtures = 10"])]
    return finish(ctx, runs, params={"cat": cat_params, "dmol": dmol_params},
                  dmol_filter_size=dmol_filter)


def study_local_1d_vs_2d(ctx):
    """1D local block 256 (the preset) vs 2D local with the same memory per query."""
    query, flange = ((4, 8), (4, 4)) if ctx.smoke else (QUERY_2D, FLANGE_2D)
    runs = [cifar_run(ctx, "local_1d", aliases=PRESET_ALIASES),
            cifar_run(ctx, "local_2d", ['t2t_image.ImageTransformer.dec_attention_type = '
                                        '"local_2d"',
                                        f"t2t_image.ImageTransformer.query_shape = {query}",
                                        f"t2t_image.ImageTransformer.memory_flange = {flange}"])]
    return finish(ctx, runs, settings_note={"local_1d": {"block_length": 256},
                                            "local_2d": {"query_shape": query,
                                                         "memory_flange": flange}})


def study_super_resolution(ctx):
    """CelebA 8x8 -> 32x32 (the celeba_sr_8_32 preset): bits/dim and sample metrics."""
    from reproduce32_sr import eval_sr_table
    from reproduce32_sr import sample_metrics

    bindings = schedule_bindings(ctx.s, ctx.smoke, "Img2ImgTransformer")
    run = get_run(ctx, "img2img", [SR_PRESET], bindings)
    run_dir = run["run_dir"]
    results = os.path.join(run_dir, "sr_eval_results.json")
    if not os.path.isfile(results):  # the run's own evaluation, as the trainer writes it
        gin_files, extra = (([os.path.join(run_dir, "operative_config.gin")], [])
                            if run["reused"] else ([SR_PRESET], bindings))
        R.run_trainer(run_dir, gin_files, extra, mode="eval_sr")
    with open(results) as f:
        sr_eval = json.load(f)
    metrics = sample_metrics(ctx, run_dir)
    metrics["tables"].insert(0, eval_sr_table(sr_eval))
    return finish(ctx, [run], eval_sr=sr_eval, **metrics)


def study_two_stage(ctx):
    """The two-stage preset's runs: first-stage PSNR vs bicubic, the prior's curve."""
    missing = [n for n in ("first_stage", "prior") if n not in ctx.reuse]
    if missing:
        raise ValueError(f"--scale=32 --study=two_stage reads finished runs: pass "
                         f"{' '.join(f'--reuse {n}=RUN_DIR' for n in missing)} (e.g. "
                         "first_stage=/work/runs/celeba32_vq prior=/work/runs/celeba32_prior).")
    first = read_run("first_stage", ctx.reuse["first_stage"])
    path = os.path.join(first["run_dir"], "eval_results.json")
    if not os.path.isfile(path):
        raise ValueError(f"--reuse first_stage={first['run_dir']}: no eval_results.json "
                         "(a finished FirstStageTrainer run writes it).")
    with open(path) as f:
        first["eval"] = json.load(f)
    prior = read_run("prior", ctx.reuse["prior"])
    if not prior["curve"]:
        raise ValueError(f"--reuse prior={prior['run_dir']}: no eval bits_per_dim events.")
    e = first["eval"]
    table = ["| first stage | validation PSNR (dB) | bicubic PSNR (dB) | codebook usage | "
             "perplexity | wall time (min) |", "|---|---|---|---|---|---|",
             f"| {first['run_dir']} | {e.get('psnr', float('nan')):.2f} | "
             f"{e.get('bicubic_psnr', float('nan')):.2f} | "
             f"{e.get('codebook_usage', float('nan')):.3f} | "
             f"{e.get('perplexity', float('nan')):.1f} | {_minutes(first['seconds'])} |"]
    ctx.plot_curves("two_stage", [prior], key=lambda r: r["name"],
                    ylabel="validation bits per code")
    return dict(runs=[prior], **summarise([prior]), first_stage=first, tables=[table],
                warnings=ctx.warnings,
                notes=[f"The prior's column is validation bits per code (not per sub-pixel). "
                       f"First stage command: `{first['command']}`."])


# ------------------------------------------------------------ reporting
PAPER_ORDER = {"block_length": ["block256", "block64"],
               "conditional": ["conditional", "unconditional"]}

SETUP = {
    "block_length": "The cifar10_32_uncond preset (1D local, categorical, d 128, 4 layers) "
                    "with query blocks of 64 or 256 sub-pixels on the 32x96 sub-pixel grid.",
    "conditional": "The preset with and without a learned class embedding (TASK = "
                   "class_conditional, num_classes = 10). Sample grid: one column per class, "
                   "T = 1.0, shown 4x nearest.",
    "cat_vs_dmol": "Categorical: the preset (block 256 sub-pixels = 2.67 pixel rows). DMOL: "
                   "10 logistics per pixel on the 32x32 pixel grid, block 85 pixels (the same "
                   "image area, 2.66 rows; the 16x16 study's 4 rows do not apply to a 256 "
                   "sub-pixel block), FFN widened so the parameter counts match (params below).",
    "local_1d_vs_2d": "Equal query block and memory. 1D block 256: a query block of 256 "
                      "sub-pixels attends to the previous block and itself, 512 positions; a "
                      "query sees 256 + its causal prefix, 384.5 on average. 2D local on the "
                      "32x96 sub-pixel grid, query (8, 32) = 256 positions, memory flange (4, "
                      "8): the strip 4 rows above x (32 + 2 x 8) columns (192), the 8 columns "
                      "left of the block over its 8 rows (64) and the block itself (256) = 512 "
                      "positions; a query sees 192 + 64 + its causal prefix, 384.5 on average, "
                      "as 1D. (A (8, 16) query with flange (8, 8) sees as much on average but "
                      "holds 448; the suggested (8, 32) with flange (8, 16) would hold 1,024.)",
    "super_resolution": "The celeba_sr_8_32 preset (Img2Img, 2 + 3 layers of d 128, 1D local "
                        "decoder) on CelebA 8x8 -> 32x32; sample metrics on the first 50 "
                        "held-out pairs (train[90%:]); copying check against the 8,100 "
                        "training faces (train[:90%]).",
    "two_stage": "The two-stage preset's runs (VQ first stage, code prior), read as trained.",
}


def _minutes(seconds):
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def _wall(group):
    """Wall time in minutes; a resumed run's time without the gaps between its sessions too."""
    text, active = _minutes(group["seconds"]), group.get("seconds_without_gaps")
    if active is not None and group["seconds"] - active > 60:
        text += f" ({_minutes(active)} without gaps between resumed sessions)"
    return text


def _fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)


def verdict(result, order):
    """Whether the paper's ordering holds at the shared step, and a linear budget estimate."""
    groups, step = result["groups"], result["shared_step"]
    if not order or step is None or not all(k in groups for k in order):
        return []
    means = [groups[k]["mean"] for k in order]
    holds = all(a <= b for a, b in zip(means, means[1:]))
    ranked = " < ".join(f"{k} {groups[k]['mean']:.3f}" for k in order)
    lines = [f"Expected ordering at step {step} (lower is better): {ranked}: the paper's "
             f"ordering {'holds' if holds else 'does NOT hold'} (one seed)."]
    if not holds:
        better, worse = groups[order[0]], groups[order[-1]]
        gap = better["mean"] - worse["mean"]
        closing = ((worse["slope_per_1000"] or 0.0) - (better["slope_per_1000"] or 0.0))
        if better["slope_per_1000"] is not None and worse["slope_per_1000"] is not None \
                and closing > 0:
            lines.append(f"Budget (linear extrapolation of the last slopes): the gap of "
                         f"{gap:.3f} bits/dim closes at {closing:.3f} bits/dim per 1,000 "
                         f"steps, i.e. after about {1000 * gap / closing:.0f} more steps.")
        else:
            lines.append("Budget: the last slopes do not close the gap (no crossing in a "
                         "linear extrapolation); a longer run is the only evidence left.")
    return lines


def write_report(out_root):
    """Regenerates <out_root>/reproduction32.md from every scale-32 study JSON present."""
    out_dir = os.path.join(out_root, "reproduction32")
    lines = ["# Reproduction at 32x32: the presets' setting", "",
             "Generated by `python3 experiments/reproduce.py --scale=32` (see docs/"
             "reproduction.md) from `reproduction32/*.json`. Runs are the presets' runs with "
             "one setting changed (1,000 steps, evaluation every 250 on all 509 held-out "
             "CIFAR-10 images) or the presets' own runs, reused (evaluated every 500 steps). "
             "Runs are compared at the last step they all share; each run's own last value "
             "and the slope of its last two evaluations are shown too.", ""]
    for study in STUDIES:
        path = os.path.join(out_dir, f"{study}.json")
        lines += [f"## {study}", "", f"Paper: {R.PAPER[study][0]}", "", f"Set-up: {SETUP[study]}",
                  ""]
        if not os.path.exists(path):
            lines += ["**Not run yet.**", ""]
            continue
        with open(path) as f:
            result = json.load(f)
        lines += [f"Command: `{result['command']}`; wall time of the study "
                  f"{result['seconds'] / 60:.1f} min.", ""]
        lines += [f"{w}" for w in result.get("warnings", [])]
        lines += [""] if result.get("warnings") else []
        for key in ("params", "dmol_filter_size", "settings_note"):
            if key in result:
                lines += [f"{key}: `{json.dumps(result[key])}`", ""]
        step = result["shared_step"]
        lines += [f"| run | reused | wall time (min) | bits/dim at step {step} | own last "
                  "(step) | slope of the last two evaluations (bits/dim per 1,000 steps) |",
                  "|---|---|---|---|---|---|"]
        for name, g in result["groups"].items():
            lines.append(f"| {name} | {'yes' if g['reused'] else 'no'} | "
                         f"{_wall(g)} | {_fmt(g['mean'])} | {g['last']:.3f} "
                         f"({g['last_step']}) | {_fmt(g['slope_per_1000'], '+.3f')} |")
        lines.append("")
        lines += [f"Command of {r['name']}: `{r['command']}`" for r in result["runs"]]
        lines.append("")
        for line in verdict(result, PAPER_ORDER.get(study)):
            lines += [line, ""]
        for table in result.get("tables", []):
            lines += table + [""]
        for note in result.get("notes", []):
            lines += [note, ""]
        lines += [f"![{study}](reproduction32/{study}.png)", ""]
        if result.get("samples_grid"):
            lines += [f"![{study} samples](reproduction32/{result['samples_grid']})", ""]
    with open(os.path.join(out_root, "reproduction32.md"), "w") as f:
        f.write("\n".join(lines))


def run_studies(studies, args, reuse, out_root):
    """Runs the scale-32 studies; each writes its JSON, then the report is regenerated."""
    out_dir = os.path.join(out_root, "reproduction32")
    os.makedirs(out_dir, exist_ok=True)
    flags = ["--scale=32"] + (["--smoke"] if args.smoke else []) + [
        f"--reuse {k}={v}" for k, v in reuse.items()]
    for study in studies:
        ctx = R.Context(study, args.smoke, os.path.join(args.work_dir, "smoke32" if args.smoke
                                                        else "full32"), out_dir)
        ctx.s, ctx.reuse, ctx.warnings = settings(args.smoke), dict(reuse), []
        start = time.time()
        print(f"study {study} (scale 32): running ...", flush=True)
        result = globals()[f"study_{study}"](ctx)
        result.update(study=study, smoke=args.smoke, seconds=time.time() - start,
                      settings=ctx.s, command=" ".join(["python3", "experiments/reproduce.py",
                                                        f"--study={study}"] + flags))
        with open(os.path.join(out_dir, f"{study}.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"study {study}: done in {result['seconds'] / 60:.1f} min", flush=True)
        write_report(out_root)
    print(f"report: {os.path.join(out_root, 'reproduction32.md')}")
