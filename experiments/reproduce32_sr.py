"""Sample metrics of the scale-32 super-resolution study (CelebA 8x8 -> 32x32).

On the first ``sr_count`` held-out pairs (train[90%:] of the CelebA npz): PSNR against the
original, consistency with box (the inputs' own) and bicubic (the paper's) downsampling of
the sample, for nearest and bicubic upsampling and for samples at T = 1.0 / 0.9 / 0.8; and
the paper's copying check: MS-SSIM of each sample (T = 1.0, 0.9) to the training face
(train[:90%]) whose 8x8 version is nearest to the sample's box-downsampled 8x8, next to
the MS-SSIM of the sample and its own original.
"""

import os
import time

import numpy as np

import reproduce32 as S

TEMPERATURES = (1.0, 0.9, 0.8)
COPY_TEMPERATURES = (1.0, 0.9)


def celeba_pairs(split, batch_size, count=None):
    """(inputs 8x8, targets 32x32) uint8 of a split, through t2t_image.data.make_dataset."""
    from t2t_image.data import make_dataset

    data = make_dataset("npz", split, batch_size=batch_size, task="super_resolution",
                        image_size=32, input_size=8, training=False,
                        source_kwargs={"path": S.CELEBA, "image_key": "x32",
                                       "inputs_key": "x8"})
    inputs, targets = [], []
    for batch in data:
        inputs.append(np.asarray(batch["inputs"]))
        targets.append(np.asarray(batch["targets"]))
        if count is not None and sum(len(x) for x in inputs) >= count:
            break
    return np.concatenate(inputs)[:count], np.concatenate(targets)[:count]


def sample_metrics(ctx, run_dir):
    from t2t_image import evaluation
    from t2t_image.ops.image_metrics import psnr
    from t2t_image.sampling import sample
    from t2t_image.storage.model_loading import load_model

    count = ctx.s["sr_count"]
    inputs, targets = celeba_pairs("train[90%:]", count, count)
    rows, samples = [], {}

    def add(method, images, seconds=None):
        rows.append({"method": method,
                     "psnr_db": float(np.mean(np.minimum(np.asarray(psnr(images, targets)),
                                                         100.0))),
                     "consistency_box": float(evaluation.consistency(inputs, images).mean()),
                     "consistency_bicubic": float(
                         evaluation.bicubic_consistency(inputs, images).mean()),
                     "seconds": seconds})

    for name, images in evaluation.super_resolution.upsample_baselines(inputs, 32).items():
        add(name, images)
    model, _ = load_model(run_dir)
    for t in TEMPERATURES:
        start = time.time()
        samples[t] = np.asarray(sample(model, count, temperature=t, inputs=inputs, seed=0),
                                np.uint8)
        add(f"Image Transformer, T={t}", samples[t], time.time() - start)
    train_low, train_high = celeba_pairs("train[:90%]", 900)
    copying = []
    for t in COPY_TEMPERATURES:
        near = evaluation.nearest_training_ms_ssim(samples[t], train_low, train_high)
        own = evaluation.ms_ssim(samples[t], targets)
        copying.append({"temperature": t,
                        "nearest_training_ms_ssim": float(near["ms_ssim"].mean()),
                        "own_original_ms_ssim": float(own.mean()),
                        "nearest_training_index": near["index"].tolist()})
    grid = "super_resolution_samples.png"
    evaluation.write_sample_grid(os.path.join(ctx.out_dir, grid), inputs[:8],
                                 [samples[t][:8] for t in TEMPERATURES], targets[:8],
                                 min_tile_size=128)
    table = ["| method | PSNR vs original (dB) | consistency, box downsampling | "
             "consistency, bicubic downsampling (paper's) |", "|---|---|---|---|"]
    table += [f"| {r['method']} | {r['psnr_db']:.2f} | {r['consistency_box']:.5f} | "
              f"{r['consistency_bicubic']:.5f} |" for r in rows]
    copy_table = ["| temperature | MS-SSIM to the nearest training face (x100; paper 44.3) | "
                  "MS-SSIM to its own original (x100) |", "|---|---|---|"]
    copy_table += [f"| {c['temperature']} | {100 * c['nearest_training_ms_ssim']:.1f} | "
                   f"{100 * c['own_original_ms_ssim']:.1f} |" for c in copying]
    notes = [f"Metrics on the first {count} held-out pairs; consistency is an MSE on a [0, 1] "
             "scale (paper: 0.01). Copying check: nearest = L2 between the sample's box-"
             f"downsampled 8x8 and the 8x8 inputs of the {len(train_low):,} training faces. "
             "MS-SSIM at 32x32 with 3 scales (tf.image.ssim_multiscale's first three power "
             "factors renormalised) and a 3-pixel filter: the default 5 scales x 11-pixel "
             "filter does not fit 32x32 images, so the numbers are not the paper's exact "
             "metric. Grid: input, T = 1.0 / 0.9 / 0.8, original."]
    return {"sample_metrics": rows, "copying": copying, "tables": [table, copy_table],
            "notes": notes, "samples_grid": grid}


def eval_sr_table(sr_eval):
    """Own vs shuffled inputs from the run's `--mode=eval_sr` results."""
    return ["| bits/dim, own inputs | bits/dim, shuffled inputs | images |", "|---|---|---|",
            f"| {sr_eval['bits_per_dim']:.4f} | "
            f"{S._fmt(sr_eval.get('bits_per_dim_shuffled_inputs'), '.4f')} | "
            f"{sr_eval.get('num_images')} |"]

