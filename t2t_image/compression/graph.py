"""The codec's one compiled program: the cached decoding loop with an entropy coder inside.

Compression and decompression run the SAME compiled function (one per model,
batch size and backend) with the same shapes, so the model computes
bit-identical probabilities on both sides by construction:

* compressing, every row is *teacher-forced*: each step writes the image's
  true value into the canvas and records that value's integer frequency and
  start (``rans.frequencies``), from which ``rans.encode`` writes the streams;
* decompressing, each step decodes the value from the row's stream
  (``rans.decode_symbol``) and writes it, so the next step sees exactly what
  the encoder's step saw; padding rows of a last, short batch are
  teacher-forced with the same zero images on both sides.

The loop is the sampler's (``t2t_image.sampling.sampler.run_steps``); only what
a step writes differs. A "cat" step codes one sub-pixel, a "dmol" step its
pixel's channels in turn, each from its 256-bin table
(``discretized_mix_logistic_channel_log_probs``). Not in T2T.
"""

import numpy as np
from keras import ops

from t2t_image.compression import rans
from t2t_image.ops.dmol import discretized_mix_logistic_channel_log_probs
from t2t_image.sampling.compiled import compiled
from t2t_image.sampling.sampler import ensure_built, run_steps


def num_symbols(model):
    """Coded symbols per image: its sub-pixels (``height * width * channels``)."""
    return model.image_height * model.image_width * model.num_channels


def payload_length(model):
    """Bytes per image of the payload tensor: the longest possible stream."""
    return rans.max_stream_bytes(num_symbols(model))


def codec_graph(model, targets, conditioning, payload, teacher):
    """The coding loop as ``keras.ops`` (traced in ``codec_function``).

    Args:
        model: a built ``ImageTransformer`` (or ``Img2ImgTransformer``) with 256 values.
        targets: int32 `[batch, height, width, channels]`, the images of
            teacher-forced rows (ignored in the other rows).
        conditioning: dict of tensors (``labels`` `[batch]`, ``inputs``), maybe empty.
        payload: int32 `[batch, payload_length(model)]`, the byte values of
            each row's stream (ignored in teacher-forced rows).
        teacher: bool `[batch]`, which rows are teacher-forced.

    Returns:
        dict: ``images`` int32 like ``targets`` (the true images in
        teacher-forced rows, the decoded ones elsewhere), ``start`` and
        ``freq`` int32 `[num_symbols, batch]` (each coded value's interval,
        in generation order), ``state`` and ``position`` int32 `[batch]` (the
        decoders' final state and bytes read), ``nats`` float32 `[batch]`
        (the model's negative log-likelihood of each row's values: its
        256-way softmax, the DMOL tables normalised).
    """
    batch = ops.shape(targets)[0]
    cache = model.init_cache(batch, conditioning)
    canvas = ops.zeros_like(targets)
    per_step = 1 if model.likelihood == "cat" else model.num_channels
    records = ops.zeros((num_symbols(model), batch), "int32")
    state, position = rans.start_state(payload)

    def code(logits, true, index, carry):
        state, position, starts, freqs, nats = carry
        freq, start = rans.frequencies(logits)
        decoded, new_state, new_position = rans.decode_symbol(freq, start, state, position,
                                                              payload)
        value = ops.where(teacher, ops.cast(true, "int32"), decoded)
        pick = value[:, None]
        begin = (index, 0)
        starts = ops.slice_update(starts, begin,
                                  ops.take_along_axis(start, pick, axis=-1)[None, :, 0])
        freqs = ops.slice_update(freqs, begin, ops.take_along_axis(freq, pick, axis=-1)[None, :, 0])
        # The model's own cost of the value, to report the coder's overhead (float32).
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        nats = nats - ops.take_along_axis(log_probs, pick, axis=-1)[:, 0]
        return value, (new_state, new_position, starts, freqs, nats)

    def choose(out, t, true, carry):
        if per_step == 1:
            return code(out, true, t, carry)
        values = []
        for c in range(per_step):
            pixel = ops.stack(values + [ops.zeros_like(true[:, 0])] * (per_step - c), axis=-1)
            table = discretized_mix_logistic_channel_log_probs(out, pixel, c)
            value, carry = code(table, true[:, c], t * per_step + c, carry)
            values.append(value)
        return ops.stack(values, axis=-1), carry

    # run_steps writes symbols in generation order; record index t * per_step + c.
    images, _, carry = run_steps(model, canvas, cache, ops.convert_to_tensor(np.int32(0)),
                                 ops.convert_to_tensor(np.int32(num_symbols(model) // per_step)),
                                 choose, (state, position, records, records,
                                          ops.zeros((batch,), "float32")), given=targets)
    state, position, starts, freqs, nats = carry
    return dict(images=images, start=starts, freq=freqs, state=state, position=position,
                nats=nats)


def codec_function(model, batch_size):
    """The compiled ``codec_graph`` for batches of ``batch_size`` (XLA, both backends).

    One compiled function per (model, batch size): it is only ever called
    with one set of shapes, so TensorFlow traces it once with static shapes
    (no relaxed retrace) and compression and decompression share it.

    Args:
        model: the model.
        batch_size: int, the compiled batch.

    Returns:
        callable ``(targets, conditioning, payload, teacher) -> dict``.
    """
    ensure_built(model)
    return compiled(model, f"compression/batch={int(batch_size)}", True, lambda: (
        lambda targets, conditioning, payload, teacher: codec_graph(
            model, targets, conditioning, payload, teacher)))
