"""compress/decompress: bit-exact round trips of every model kind, sizes, named refusals.

One compiled coding loop per model (shared by compressing and decompressing); 8x8 CIFAR-10
validation images plus all-black, all-white and noise images, 7 in batches of 4 (the last
batch is padded).
"""

import keras
import numpy as np
import pytest

from t2t_image.compression import CompressedFileError, compress, decompress, read_header
from t2t_image.compression import codec, file_format  # noqa: F401 (zlib via file_format)
from t2t_image.data.numpy_pipeline import area_resize_numpy
from t2t_image.models import ImageTransformer, Img2ImgTransformer
from tests.conftest import SHARED_DATA

SIZE = 8
BATCH = 4

KINDS = {
    "cat_1d_conditional": (ImageTransformer, dict(dec_attention_type="local_1d", block_length=8,
                                                  num_classes=10)),
    "dmol_2d": (ImageTransformer, dict(dec_attention_type="local_2d", likelihood="dmol",
                                       query_shape=(2, 4), memory_flange=(2, 4))),
    "cat_sr_2d": (Img2ImgTransformer, dict(dec_attention_type="local_2d", query_shape=(2, 4),
                                           memory_flange=(1, 4), input_height=4, input_width=4,
                                           num_encoder_layers=1)),
}


@pytest.fixture(scope="module")
def images():
    path = SHARED_DATA / "cifar10" / "cifar10_train_exact.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with np.load(path) as data:
        real = area_resize_numpy(data["x"][-4:], SIZE)  # the validation split's last images
        labels = data["y"][-4:].astype(np.int64)
    noise = np.random.RandomState(0).randint(0, 256, (1, SIZE, SIZE, 3)).astype(np.uint8)
    special = np.concatenate([np.zeros_like(noise), np.full_like(noise, 255), noise])
    return np.concatenate([real, special]), np.concatenate([labels, [0, 9, 5]])


def _model(kind):
    keras.utils.set_random_seed(1)
    cls, overrides = KINDS[kind]
    model = cls(image_height=SIZE, image_width=SIZE, hidden_size=16, filter_size=24, num_heads=2,
                num_decoder_layers=1, num_mixtures=3, layer_prepostprocess_dropout=0.0,
                **overrides)
    features = {"targets": np.zeros((1, SIZE, SIZE, 3), np.int32)}
    if model.num_classes:
        features["labels"] = np.zeros(1, np.int32)
    if cls is Img2ImgTransformer:
        features["inputs"] = np.zeros((1, 4, 4, 3), np.int32)
    model(features)
    # Sharper than at initialisation, so that the probabilities vary from symbol to symbol.
    model.output_layer.kernel.assign(model.output_layer.kernel * 3.0)
    return model


@pytest.fixture(scope="module", params=sorted(KINDS))
def coded(request, images):
    model = _model(request.param)
    pixels, labels = images
    labels = labels if model.num_classes else None
    # Super-resolution: given low-resolution inputs (not the default area resize), stored raw.
    inputs = area_resize_numpy(pixels, 4) ^ 1 if isinstance(model, Img2ImgTransformer) else None
    stats = {}
    data = compress(model, pixels, labels, batch_size=BATCH, stats=stats, inputs=inputs)
    return model, pixels, labels, data, stats, inputs


def _features(model, pixels, labels, inputs):
    features = {"targets": pixels.astype(np.int32)}
    if labels is not None:
        features["labels"] = labels.astype(np.int32)
    if isinstance(model, Img2ImgTransformer):
        features["inputs"] = inputs.astype(np.int32)
    return features


def test_round_trip_is_bit_exact(coded):
    model, pixels, labels, data, stats, inputs = coded
    if inputs is not None:  # the low-resolution part of the two-part code, raw
        assert read_header(data, model=model)[0].inputs == inputs.astype(np.uint8).tobytes()
    back_stats = {}
    decoded, back_labels = decompress(model, data, stats=back_stats)
    np.testing.assert_array_equal(decoded, pixels)
    assert decoded.dtype == np.uint8
    if labels is None:
        assert back_labels is None
    else:
        np.testing.assert_array_equal(back_labels, labels)
    # The decoder computed exactly the encoder's probabilities.
    np.testing.assert_array_equal(back_stats["model_bits"], stats["model_bits"])


def test_size_is_the_model_bits_plus_the_header(coded):
    model, pixels, labels, data, stats, inputs = coded
    header, streams = read_header(data, model=model)
    assert len(data) == header.size + sum(len(s) for s in streams) + 4
    # 24 bytes, a 1- or 2-byte varint per stream length, a byte per label.
    expected = 24 + sum(1 if len(s) < 128 else 2 for s in streams) + \
        (len(pixels) if labels is not None else 0)
    if isinstance(model, Img2ImgTransformer):
        expected += len(pixels) * 4 * 4 * 3  # the raw low-resolution inputs
    assert header.size + 4 == expected
    # Each stream: the model's own cost of the image (its full parallel pass) within 1%,
    # plus the coder's 4-byte state.
    nats = -np.asarray(model.log_prob(_features(model, pixels, labels, inputs)), np.float64)
    model_bits = nats / np.log(2.0)
    np.testing.assert_allclose(stats["model_bits"], model_bits, rtol=1e-4)
    stream_bits = 8.0 * np.array([len(s) for s in streams])
    assert (np.abs(stream_bits - 32 - model_bits) <= 0.01 * model_bits + 8).all(), \
        (stream_bits, model_bits)


def _fix_crc(data):
    data = bytearray(data)
    data[-4:] = file_format.zlib.crc32(data[:-4]).to_bytes(4, "big")
    return bytes(data)


def test_bad_files_are_refused_by_name(coded):
    model, _, _, data, _, _ = coded
    header, _ = read_header(data, model=model)
    cases = {
        "a header byte": (lambda d: d[:9] + bytes([d[9] ^ 4]) + d[10:], "corrupted"),
        "a payload byte": (lambda d: d[:-20] + bytes([d[-20] ^ 1]) + d[-19:], "corrupted"),
        "a truncated file": (lambda d: d[:-7], "corrupted or truncated"),
        "another format version": (lambda d: _fix_crc(d[:3] + b"\x07" + d[4:]),
                                   "format version 7; this t2t_image reads version 1"),
        "another model": (lambda d: _fix_crc(d[:5] + b"\xff\xff\xff\xff" + d[9:]),
                          "compressed by another model"),
        "another environment": (lambda d: _fix_crc(d[:9] + bytes([d[9] ^ 1]) + d[10:]),
                                "other versions or another device"),
        "another backend": (lambda d: _fix_crc(d[:4] + bytes([d[4] ^ 1]) + d[5:]),
                            "compressed under KERAS_BACKEND=jax"),
    }
    for what, (corrupt, message) in cases.items():
        with pytest.raises(CompressedFileError, match=message):
            decompress(model, corrupt(data), name="x.t2tc")
    assert header.backend == "tensorflow"


def test_a_wrong_decode_is_never_silent(coded):
    model, pixels, labels, data, _, _ = coded
    header, streams = read_header(data, model=model)
    # A payload byte changed behind a valid file CRC: the decoder runs, and the stream's end
    # or the pixel CRC refuses the result.
    bad = bytearray(data)
    bad[header.size + len(streams[0]) // 2] ^= 0x20
    with pytest.raises(CompressedFileError, match="decoding failed"):
        decompress(model, _fix_crc(bad), name="x.t2tc")
    # Another model passed off with this model's fingerprint: the same.
    fingerprint = codec.weights_fingerprint(model)
    weights = model.get_weights()
    model.set_weights([w * 1.01 for w in weights])
    try:
        with pytest.raises(CompressedFileError, match="decoding failed"):
            decompress(model, data, fingerprint=fingerprint, name="x.t2tc")
    finally:
        model.set_weights(weights)


def test_argument_checks(coded):
    model, pixels, labels, _, _, _ = coded
    with pytest.raises(ValueError, match=r"images must have shape \[n, 8, 8, 3\]"):
        compress(model, pixels[:, :4], labels)
    if isinstance(model, Img2ImgTransformer):
        with pytest.raises(ValueError, match=r"inputs must have shape \[7, 4, 4, 3\]"):
            compress(model, pixels, inputs=pixels)
    else:
        with pytest.raises(ValueError, match="the model takes none"):
            compress(model, pixels, labels, inputs=pixels)
    if labels is not None:
        with pytest.raises(ValueError, match="class-conditional"):
            compress(model, pixels)
        with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
            compress(model, pixels, labels + 10)


def test_a_preset_is_named_by_its_metadata_fingerprint(tmp_path, coded):
    presets = pytest.importorskip("t2t_image.storage.presets")
    from t2t_image.cli.compress import load

    model = coded[0]
    if isinstance(model, Img2ImgTransformer) or model.likelihood != "cat":
        pytest.skip("one model kind is enough")
    written = presets.write(str(tmp_path / "preset"), model, {})
    loaded, fingerprint = load(None, None, str(tmp_path / "preset"))
    assert fingerprint == written["fingerprint"] != codec.weights_fingerprint(loaded)
    # A file of the same weights named by the model directory's fingerprint is another
    # model's: refused before decoding.
    with pytest.raises(CompressedFileError, match="compressed by another model"):
        decompress(loaded, coded[3], fingerprint=fingerprint)
