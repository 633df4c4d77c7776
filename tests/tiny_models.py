"""Tiny models for the sampler tests of both backends (no TensorFlow import)."""

import numpy as np

from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer

H = W = 4


def tiny(cls=ImageTransformer, **overrides):
    args = dict(image_height=H, image_width=W, hidden_size=16, filter_size=24, num_heads=2,
                num_decoder_layers=2, block_length=4, query_shape=(2, 2), memory_flange=(1, 2),
                num_mixtures=3, layer_prepostprocess_dropout=0.0)
    if cls is Img2ImgTransformer:
        args.update(input_height=2, input_width=2, num_encoder_layers=1)
    args.update(overrides)
    return cls(**args)


def features(model, batch=1):
    out = {"targets": np.zeros((batch, H, W, model.num_channels), np.int32)}
    if model.num_classes:
        out["labels"] = np.zeros(batch, np.int32)
    if isinstance(model, Img2ImgTransformer):
        out["inputs"] = np.zeros((batch, 2, 2, 3), np.int32)
    return out


def bad_model(cls=ImageTransformer, scale=None, **overrides):
    """A tiny built model with deliberately sharp outputs, so sampling bugs show."""
    model = tiny(cls, **overrides)
    model(features(model))
    if scale is None:
        scale = 20.0 if model.likelihood == "cat" else 4.0
    model.output_layer.kernel.assign(model.output_layer.kernel * scale)
    return model


# (model class, constructor overrides, conditioning) of the cached == reference tests.
SAMPLER_CASES = [
    (ImageTransformer, dict(dec_attention_type="local_1d"), {}),
    (ImageTransformer, dict(dec_attention_type="local_2d", query_shape=(3, 5)), {}),
    (ImageTransformer, dict(dec_attention_type="local_2d", likelihood="dmol",
                            block_shift="block_raster"), {}),
    (ImageTransformer, dict(dec_attention_type="global", likelihood="dmol"), {}),
    (ImageTransformer, dict(dec_attention_type="local_1d", num_classes=5),
     dict(labels=np.array([3, 1]))),
    (Img2ImgTransformer, dict(dec_attention_type="local_2d"),
     dict(inputs=np.random.RandomState(1).randint(0, 256, (2, 2, 2, 3)))),
]
