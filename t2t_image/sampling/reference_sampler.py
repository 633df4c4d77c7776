"""The slow reference sampler: one full forward pass per generated position.

This is how Tensor2Tensor samples an Image Transformer (``Transformer.infer``
without a cache re-runs the network on the partially generated image at every
step). It only uses ``model(features)``, so it works for any model with the
ImageTransformer interface, and it defines the samples the cached sampler
(``t2t_image.sampling.sample``) must reproduce.
"""

import numpy as np
from keras import ops

from t2t_image.sampling.common import (
    check_sampling_args,
    conditioning_features,
    draw_values,
    generation_order,
    output_dtype,
    step_coordinates,
    step_seed,
)
from t2t_image.sampling.compiled import compiled


def reference_sample(model, num_samples, temperature=1.0, seed=0, labels=None, inputs=None,
                     prefix=None, num_prefix_rows=0, max_steps=None, callback=None, top_k=None):
    """Samples images by recomputing the whole model at every generation step.

    The image starts as zeros (or with the top ``num_prefix_rows`` rows of
    ``prefix``); positions are visited in the model's generation order
    (``generation_order``). At step ``t`` the full model runs on the current
    image, the logits of the step's position are taken and one value is drawn
    with seed ``[seed, t]`` (``step_seed``) through ``draw_values``: one
    sub-pixel (or code) for ``likelihood="cat"`` (``sample_categorical``, among
    the ``top_k`` largest logits when set), one pixel with
    its three channels for ``"dmol"`` (``sample_discretized_mix_logistic``). Positions in the kept prefix rows
    are not drawn (their step is skipped, other steps keep their seeds).

    T2T ``Transformer.infer`` / ``_slow_greedy_infer`` with sampling (the
    procedure behind Parmar et al. 2018, Sec. 5 samples and Table 2
    completions).

    Args:
        model: an ``ImageTransformer`` (or subclass such as Img2Img).
        num_samples: int, number of images.
        temperature: float >= 0; 0 takes the argmax (most likely value).
        seed: int, the sampling seed.
        labels: an int or int array ``[num_samples]`` for class-conditional models.
        inputs: array ``[num_samples, ...]`` of conditioning images
            (``features["inputs"]``, e.g. low-resolution images for Img2Img).
        prefix: int array ``[num_samples, rows, width, channels]`` (or one
            image ``[rows, width, channels]``) whose top ``num_prefix_rows``
            rows are kept (image completion).
        num_prefix_rows: int, rows of ``prefix`` to keep.
        max_steps: optional int, stop after this many generation steps (the
            remaining positions stay 0); used to time the first steps.
        callback: optional ``callback(step, num_steps)`` called after each step.
        top_k: None or 0 (off), or an int in ``[1, vocab_size]`` ("cat" only).

    Returns:
        NumPy array ``[num_samples, height, width, channels]``: uint8 when the
        model's ``vocab_size <= 256``, int32 otherwise.

    Raises:
        ValueError: on invalid arguments (named in the message).
    """
    args = check_sampling_args(model, num_samples, temperature, seed, labels, inputs, prefix,
                               num_prefix_rows, top_k)
    n = args["num_samples"]
    shape = (n, model.image_height, model.image_width, model.num_channels)
    canvas = np.zeros(shape, np.int32) if args["prefix"] is None else args["prefix"].copy()
    context = {k: ops.convert_to_tensor(v) for k, v in conditioning_features(args).items()}
    # The full forward pass, compiled without XLA under TensorFlow (as T2T runs it).
    forward = compiled(model, "reference_forward", False, lambda: (
        lambda context, targets: model(dict(context, targets=targets), training=False)))

    order = generation_order(model)
    rows, cols, channels = step_coordinates(model, order)
    num_steps = len(order) if max_steps is None else min(int(max_steps), len(order))
    for t in range(num_steps):
        y, x, c = int(rows[t]), int(cols[t]), int(channels[t])
        if y < args["num_prefix_rows"]:
            continue
        out = forward(context, ops.convert_to_tensor(canvas))
        seed_t = step_seed(args["seed"], t)
        if model.likelihood == "cat":
            canvas[:, y, x, c] = np.asarray(
                draw_values("cat", out[:, y, x, c], seed_t, args["temperature"], args["top_k"]))
        else:
            canvas[:, y, x, :] = np.asarray(
                draw_values("dmol", out[:, y, x], seed_t, args["temperature"]))
        if callback is not None:
            callback(t + 1, num_steps)
    return canvas.astype(output_dtype(model))
