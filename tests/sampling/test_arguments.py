"""Sampling-job arguments are checked before sampling, with messages that name the flag."""

import re

import numpy as np
import pytest

from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.sampling.arguments import SamplingArgumentError
from t2t_image.sampling.arguments import check_against_model
from t2t_image.sampling.arguments import check_arguments
from t2t_image.sampling.arguments import code_grid_size


@pytest.fixture(scope="module")
def conditional():
    model = ImageTransformer(image_height=4, image_width=4, hidden_size=16, filter_size=16,
                             num_heads=2, num_decoder_layers=1, block_length=4, num_classes=3)
    model({"targets": np.zeros((1, 4, 4, 3), np.int32), "labels": np.zeros(1, np.int32)})
    return model


def test_arguments_are_checked_against_the_loaded_model(conditional):
    from t2t_image.sampling import run_sampler

    model = conditional  # class-conditional, num_classes=3, 4x4 images
    image = np.zeros((4, 4, 3), np.uint8)
    cases = [
        (dict(), "is class-conditional (num_classes=3): pass --label in 0..2"),
        (dict(label=3), "--label=3 is out of range"),
        (dict(label=7), "--label=7 is out of range"),
        (dict(label=0, complete=image, rows=5), "--rows=5 is out of range"),
        (dict(label=0, complete=image[:3], rows=1), "--complete images are 3x4x3"),
        (dict(label=0, inputs=image[None]), "--inputs was given but ImageTransformer"),
        (dict(label=0, top_k=300), "--top_k=300 is larger than the model's vocab_size=256"),
        (dict(label=0, height=2, width=8), "a 2x8 grid, smaller than the model's 4x4"),
        (dict(label=0, complete=image, rows=1, height=8, width=8),
         "--inputs and --complete sample the training size only"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SamplingArgumentError, match=re.escape(message)):
            check_against_model(model, **kwargs)
    with pytest.raises(SamplingArgumentError, match=re.escape("--temperature must be a finite")):
        run_sampler(model, 2, float("inf"), 0, label=1, progress=False)
    check_against_model(model, label=2, complete=image, rows=4)  # valid: no error
    assert issubclass(SamplingArgumentError, ValueError)

    sr = Img2ImgTransformer(input_height=2, input_width=2, image_height=4, image_width=4,
                            hidden_size=8, filter_size=8, num_heads=2, num_encoder_layers=1,
                            num_decoder_layers=1, block_length=4)
    low = np.zeros((2, 2, 2, 3), np.uint8)
    for kwargs, message in [
        (dict(), "Img2ImgTransformer is conditioned on low-resolution images: pass --inputs "
                 "(images 2x2x3)"),
        (dict(inputs=np.zeros((1, 3, 3, 3), np.uint8)),
         "--inputs images are 3x3x3 (height x width x channels), the model expects 2x2x3"),
        (dict(inputs=low[..., :1]), "--inputs images are 2x2x1"),
        (dict(inputs=low, label=0), "--label=0 was given but Img2ImgTransformer is "
                                    "unconditional"),
    ]:
        with pytest.raises(SamplingArgumentError, match=re.escape(message)):
            check_against_model(sr, **kwargs)
    check_against_model(sr, inputs=low)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=0), "--num_samples must be a positive integer, got 0"),
    (dict(batch_size=True), "--batch_size must be a positive integer, got True"),
    (dict(height=4), "give both --height and --width or neither"),
    (dict(size_units="inches"), "--size_units must be 'pixels' or 'codes'"),
    (dict(temperature="hot"), "--temperature must be a finite number >= 0"),
    (dict(seed=2 ** 63 - 1, num_samples=17), f"[{-2 ** 63}, {2 ** 63 - 2}]"),
    (dict(label=-1), "--label must be a class id >= 0, got -1"),
    (dict(rows=2), "--rows needs --complete"),
    (dict(complete=True), "--complete needs --rows"),
    (dict(complete=True, rows=0), "--rows must be >= 1"),
])
def test_arguments_that_need_no_model(kwargs, message):
    args = dict(num_samples=4, temperature=1.0, seed=0)
    args.update(kwargs)
    with pytest.raises(SamplingArgumentError, match=re.escape(message)):
        check_arguments(**args)
    check_arguments(num_samples=17, temperature=0.0, seed=2 ** 63 - 2)  # the last valid seed


def test_code_grid_size():
    class FirstStage:
        downsample_factor = 4

    assert code_grid_size(None, None, None, "pixels") == (None, None)
    assert code_grid_size(None, 8, 12, "pixels") == (8, 12)
    assert code_grid_size(FirstStage(), 32, 16, "pixels") == (8, 4)
    assert code_grid_size(FirstStage(), 5, 6, "codes") == (5, 6)
    with pytest.raises(SamplingArgumentError, match="--size_units=codes needs a two-stage"):
        code_grid_size(None, 8, 8, "codes")
    with pytest.raises(SamplingArgumentError, match="--height/--width: .*multiples of 4"):
        code_grid_size(FirstStage(), 30, 16, "pixels")
