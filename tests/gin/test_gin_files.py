"""Tests of the gin files in gin/: they parse, compose, build, and match their hyperparameters.

Every experiment file is parsed through the CLI's ``parse_gin`` and its model is
constructed through gin (the configured class behind ``Trainer.model_fn``) and
built from input shapes only, without a forward pass at full size. Its
``count_params()`` is compared with a count derived here from the bound
hyperparameters by a formula that mirrors the Image Transformer's parameter
layout (Parmar et al. 2018, Sections 3-4; T2T ``Imagetransformer`` /
``Img2imgTransformer``), not from the model's own report. The two best CIFAR-10
models (categorical and DMOL) are built at full size; the others at a reduced
width (same depth, blocks and grid) to keep the file fast.
"""

import inspect
import re

import gin
import numpy as np
import pytest

from t2t_image.cli.gin_utils import GIN_DIR
from t2t_image.cli.gin_utils import parse_gin

REPO = GIN_DIR.parent
EXPERIMENTS = sorted((GIN_DIR / "experiments").glob("*.gin"))
DATASETS = sorted((GIN_DIR / "datasets").glob("*.gin"))
MODELS = sorted((GIN_DIR / "models").glob("*.gin"))
TOP_LEVEL = [GIN_DIR / "quickstart.gin", GIN_DIR / "tiny.gin"]

# Built at full size (the others at reduced width).
FULL_SIZE = ("cifar10_local1d_cat_12l_b256.gin", "cifar10_local1d_dmol_14l.gin")

# Full-size parameter counts from the formula below; the README's table lists them.
# A change of a gin file's architecture must update this table (and the README).
FULL_SIZE_PARAMS = {
    "celeba_sr_local1d_cat.gin": 47_118_592,
    "celeba_sr_local2d_cat.gin": 47_118_592,
    "celeba_sr_local2d_cat_t2t_q3.gin": 47_118_592,
    "cifar10_cond_local1d_cat_10l.gin": 32_033_024,
    "cifar10_cond_local1d_cat_8l.gin": 25_732_352,
    "cifar10_local1d_cat_12l_b256.gin": 38_328_576,
    "cifar10_local1d_cat_8l_b16.gin": 17_330_432,
    "cifar10_local1d_cat_8l_b256.gin": 17_330_432,
    "cifar10_local1d_cat_8l_b256_t2t_dr03.gin": 25_727_232,
    "cifar10_local1d_cat_8l_b64.gin": 17_330_432,
    "cifar10_local1d_cat_8l_b8.gin": 17_330_432,
    "cifar10_local1d_dmol_12l_t2t.gin": 9_501_696,
    "cifar10_local1d_dmol_14l.gin": 11_078_144,
    "cifar10_sr_local1d_cat.gin": 47_118_592,
    "cifar10_sr_local2d_cat.gin": 47_118_592,
    "imagenet32_local1d_cat_12l_b256.gin": 38_328_576,
}

# Architecture hyperparameters every model binds explicitly (no silent defaults).
ARCH_PARAMS = (
    "image_height", "image_width", "likelihood", "hidden_size", "filter_size", "num_heads",
    "key_channels", "value_channels", "num_decoder_layers", "dec_attention_type", "pos",
    "layer_preprocess_sequence", "layer_postprocess_sequence",
    "layer_prepostprocess_dropout", "relu_dropout", "attention_dropout",
)
IMG2IMG_PARAMS = ("input_height", "input_width", "num_encoder_layers")

IMAGE_TRANSFORMER = "t2t_image.ImageTransformer"
IMG2IMG = "t2t_image.Img2ImgTransformer"


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def ids(paths):
    return [p.name for p in paths]


# ------------------------------------------------------------------- helpers
def resolve(value):
    """Evaluates a gin macro reference (``%NAME``); other values pass through."""
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
        return value.scoped_configurable_fn()
    return value


def query(binding):
    return resolve(gin.query_parameter(binding))


def model_selector():
    ref = gin.query_parameter("t2t_image.Trainer.model_fn")
    assert isinstance(ref, gin.config.ConfigurableReference), ref
    assert not ref.evaluate, "model_fn must be a reference (@X), not a call (@X())"
    assert ref.selector in (IMAGE_TRANSFORMER, IMG2IMG), ref.selector
    return ref


def hyperparameters(selector):
    """The bound architecture hyperparameters of ``selector`` (plus defaults of the rest)."""
    from t2t_image import models

    cls = models.Img2ImgTransformer if selector == IMG2IMG else models.ImageTransformer
    names = ARCH_PARAMS + (IMG2IMG_PARAMS if selector == IMG2IMG else ())
    hp = {name: query(f"{selector}.{name}") for name in names}  # raises if unbound
    defaults = {k: v.default for k, v in inspect.signature(models.ImageTransformer).parameters.items()
                if v.default is not inspect.Parameter.empty}
    for name in ("num_mixtures", "num_classes", "block_length", "query_shape", "memory_flange"):
        try:
            hp[name] = query(f"{selector}.{name}")
        except ValueError:
            hp[name] = defaults[name]
    if cls is models.Img2ImgTransformer:
        hp["num_classes"] = None
    return hp


def expected_params(hp):
    """Parameter count of an Image Transformer with hyperparameters ``hp``, by formula.

    Embedding: 256 * 3 * d (categorical, channel-specific table) or a 1x3 convolution
    3 * d + d (DMOL). Positions "emb": a row and a column table, (rows + cols) * d on the
    position grid ([H, 3W] categorical, [H, W] DMOL); "timing" has none. Class table
    num_classes * d. Per layer: attention q, k, v, o without bias
    (d*kc + d*kc + d*vc + vc*d), an encoder-decoder attention of the same size in Img2Img
    decoder layers, FFN d*f + f + f*d + d, and a layer norm (2d) per 'n' of the pre and post
    sequences per sub-layer; a final norm when the pre sequence has 'n'. Output: d*256 + 256
    (categorical) or d * 10K without bias (DMOL). Img2Img adds its encoder: its own
    256 * 3 * d input embedding (+ positions), encoder layers and the same final-norm rule.
    """
    d, f = hp["hidden_size"], hp["filter_size"]
    kc = hp["key_channels"] or d
    vc = hp["value_channels"] or d
    pre = "" if hp["layer_preprocess_sequence"] == "none" else hp["layer_preprocess_sequence"]
    post = "" if hp["layer_postprocess_sequence"] == "none" else hp["layer_postprocess_sequence"]
    norms = (pre.count("n") + post.count("n")) * 2 * d  # per sub-layer
    attention = 2 * d * kc + d * vc + vc * d + norms
    ffn = d * f + f + f * d + d + norms
    final_norm = 2 * d if "n" in pre else 0
    cat = hp["likelihood"] == "cat"
    rows, cols = hp["image_height"], hp["image_width"] * (3 if cat else 1)
    encdec = "input_height" in hp

    total = 256 * 3 * d if cat else 3 * d + d
    if hp["pos"] == "emb":
        total += (rows + cols) * d
    if hp["num_classes"]:
        total += hp["num_classes"] * d
    total += hp["num_decoder_layers"] * (attention + (attention if encdec else 0) + ffn)
    total += final_norm
    total += d * 256 + 256 if cat else d * 10 * hp["num_mixtures"]
    if encdec:
        total += 256 * 3 * d
        if hp["pos"] == "emb":
            total += (hp["input_height"] + 3 * hp["input_width"]) * d
        total += hp["num_encoder_layers"] * (attention + ffn) + final_norm
    return total


def reduced_size_params(selector):
    """Gin bindings that shrink the width of the bound model, keeping depth and layout."""
    params = [f"{selector}.hidden_size = 32", f"{selector}.filter_size = 48"]
    for name in ("key_channels", "value_channels"):
        if query(f"{selector}.{name}"):
            params.append(f"{selector}.{name} = 64")
    return params


def build_through_gin(ref):
    """Constructs the configured model class and builds it from input shapes only."""
    model = ref.scoped_configurable_fn()
    shapes = {"targets": (None, model.image_height, model.image_width, 3)}
    if ref.selector == IMG2IMG:
        shapes["inputs"] = (None, model.input_height, model.input_width, 3)
    if model.num_classes is not None:
        shapes["labels"] = (None,)
    model.build(shapes)
    return model


def bindings(path):
    """(selector, value) of every top-level binding line of a gin file; includes apart."""
    out, includes = [], []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include "):
            includes.append(line.split(None, 1)[1].strip("'\""))
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: unexpected line {line!r}"
        out.append((key.strip(), value.strip()))
    return out, includes


def header(path):
    """The leading comment lines of a gin file, without the '# ' (indentation kept)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return lines


def paragraph(lines, label):
    """The text from ``label`` to the next unindented 'Label:' line, or None."""
    for i, line in enumerate(lines):
        if line.startswith(label):
            text = [line[len(label):]]
            for more in lines[i + 1:]:
                if re.match(r"[A-Z][A-Za-z0-9 ]*:", more):
                    break
                text.append(more)
            return "\n".join(text)
    return None


# --------------------------------------------------------------- experiments
def test_every_experiment_has_a_pinned_parameter_count():
    assert {p.name for p in EXPERIMENTS} == set(FULL_SIZE_PARAMS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_builds_with_the_formula_parameter_count(path):
    parse_gin([str(path.relative_to(GIN_DIR))], [])
    ref = model_selector()
    full = hyperparameters(ref.selector)
    assert expected_params(full) == FULL_SIZE_PARAMS[path.name]
    if path.name not in FULL_SIZE:
        parse_gin([], reduced_size_params(ref.selector))
    hp = hyperparameters(ref.selector)
    model = build_through_gin(ref)
    for name in ARCH_PARAMS + ("num_classes", "block_length"):
        assert getattr(model, name) == hp[name], name  # gin -> model wiring
    assert model.built and model.count_params() > 0
    assert model.count_params() == expected_params(hp)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_model_and_data_agree(path):
    parse_gin([str(path)], [])
    ref = model_selector()
    hp = hyperparameters(ref.selector)
    train = gin.query_parameter("t2t_image.Trainer.train_dataset_fn")
    evaluation = gin.query_parameter("t2t_image.Trainer.eval_dataset_fn")
    assert train.scoped_selector == "train/t2t_image.make_dataset" and not train.evaluate
    assert evaluation.scoped_selector == "eval/t2t_image.make_dataset" and not evaluation.evaluate
    for scope, training in (("train", True), ("eval", False)):
        data = lambda name: query(f"{scope}/t2t_image.make_dataset.{name}")  # noqa: E731
        assert data("training") is training
        assert data("batch_size") == query("BATCH_SIZE/gin.macro.value")
        assert data("image_size") == hp["image_height"] == hp["image_width"]
        if ref.selector == IMG2IMG:
            assert data("task") == "super_resolution"
            assert data("input_size") == hp["input_height"] == hp["input_width"]
        elif hp["num_classes"] is None:
            assert data("task") == "unconditional"
        else:
            assert data("task") == "class_conditional"
    assert query("train/t2t_image.make_dataset.split") != query("eval/t2t_image.make_dataset.split")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_header_names_t2t_set_paper_number_and_data(path):
    text = header(path)
    t2t = paragraph(text, "T2T hparams set:")
    paper = paragraph(text, "Paper target:")
    data = paragraph(text, "Data:")
    assert t2t and re.search(r"\b(imagetransformer\w*|img2img_transformer\w*)", t2t), t2t
    assert paper and re.search(r"Table \d|\d\.\d\d", paper), paper
    assert data and re.search(r"\d+\.\d+\.\d+", data), data  # a dataset version


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_composes_one_model_and_one_dataset(path):
    lines, includes = bindings(path)
    assert [i.split("/")[0] for i in includes] == ["models", "datasets"], includes
    for include in includes:
        assert (GIN_DIR / include).is_file(), include
    for key, _ in lines:
        assert re.fullmatch(r"[A-Z_]+", key) or key.startswith("t2t_image.Trainer."), key
        assert key not in ("t2t_image.Trainer.model_fn", "t2t_image.Trainer.train_dataset_fn",
                           "t2t_image.Trainer.eval_dataset_fn"), key


@pytest.mark.parametrize("path", MODELS, ids=ids(MODELS))
def test_model_files_hold_architecture_only(path):
    lines, includes = bindings(path)
    assert not includes
    for key, _ in lines:
        assert (re.fullmatch(r"[A-Z_]+", key) or key == "t2t_image.Trainer.model_fn"
                or key.startswith((IMAGE_TRANSFORMER + ".", IMG2IMG + "."))), key


# ------------------------------------------------------------------ datasets
@pytest.mark.parametrize("path", DATASETS, ids=ids(DATASETS))
def test_dataset_file_parses_and_holds_data_only(path):
    lines, includes = bindings(path)
    assert not includes
    for key, _ in lines:
        assert key.startswith(("train/t2t_image.make_dataset.", "eval/t2t_image.make_dataset.",
                               "t2t_image.TfdsSource.", "t2t_image.NpzSource.",
                               "t2t_image.ImageFolderSource.", "t2t_image.Trainer.train_dataset_fn",
                               "t2t_image.Trainer.eval_dataset_fn")), key
    parse_gin([str(path)], ["BATCH_SIZE = 4", 'TASK = "unconditional"'])
    # Every dataset file binds the same settings, so appending one after an experiment
    # replaces all the data bindings of the experiment's own dataset file.
    for scope in ("train", "eval"):
        for name in ("source", "split", "batch_size", "task", "image_size", "input_size",
                     "imagenet_version", "training"):
            query(f"{scope}/t2t_image.make_dataset.{name}")
    source = gin.query_parameter("train/t2t_image.make_dataset.source")
    assert source.evaluate and source.selector.endswith("Source")
    assert query("train/t2t_image.make_dataset.split") != query("eval/t2t_image.make_dataset.split")


TFDS = [p for p in DATASETS if "t2t_image.TfdsSource.name" in p.read_text()]


@pytest.mark.parametrize("path", TFDS, ids=ids(TFDS))
def test_tfds_dataset_file_configures_a_source_without_network(path):
    parse_gin([str(path)], ["BATCH_SIZE = 4", 'TASK = "unconditional"'])
    source = gin.query_parameter("train/t2t_image.make_dataset.source").scoped_configurable_fn()
    version = query("train/t2t_image.make_dataset.imagenet_version")
    assert source.imagenet_version == version  # "oord" / "chrabaszcz" / None, as the file says
    assert (source.crop_box == "celeba") == ("celeb_a" in source.dataset_name)


SHARED = [p for p in DATASETS if p.name.endswith("_shared.gin")]


@pytest.mark.parametrize("path", SHARED, ids=ids(SHARED))
def test_shared_dataset_file_reads_the_offline_images(path, shared_data, monkeypatch):
    monkeypatch.chdir(REPO)  # the files name ../shared/data relative to the repository root
    parse_gin([str(path)], ["BATCH_SIZE = 3", 'TASK = "unconditional"'])
    train_ds, train_info = gin.query_parameter(
        "t2t_image.Trainer.train_dataset_fn").scoped_configurable_fn(with_info=True)
    eval_ds, eval_info = gin.query_parameter(
        "t2t_image.Trainer.eval_dataset_fn").scoped_configurable_fn(with_info=True)
    batch = next(iter(train_ds))
    size = query("train/t2t_image.make_dataset.image_size")
    assert tuple(batch["targets"].shape) == (3, size, size, 3)
    assert batch["targets"].dtype.name == "uint8"
    if query("train/t2t_image.make_dataset.task") == "super_resolution":
        assert tuple(batch["inputs"].shape) == (3, 8, 8, 3)
    # 90% / 10% of the same file, disjoint and covering it (TFDS "closest" rounding).
    total = train_info.num_examples + eval_info.num_examples
    assert train_info.num_examples == int(round(0.9 * total))
    assert train_info.training and not eval_info.training


# ------------------------------------------------------- quickstart and tiny
@pytest.mark.parametrize("path", TOP_LEVEL, ids=ids(TOP_LEVEL))
def test_quickstart_and_tiny_build_with_the_formula_count(path):
    parse_gin([path.name], [])
    ref = model_selector()
    hp = hyperparameters(ref.selector)
    for scope in ("train", "eval"):
        assert query(f"{scope}/t2t_image.make_dataset.image_size") == hp["image_height"]
    model = build_through_gin(ref)
    assert model.count_params() == expected_params(hp)


def test_tiny_forward_pass_creates_no_variables_beyond_build():
    parse_gin(["tiny.gin"], [])
    model = build_through_gin(model_selector())
    count = model.count_params()
    logits = model({"targets": np.zeros((2, 8, 8, 3), "uint8")})
    assert tuple(logits.shape) == (2, 8, 8, 3, 256)
    assert model.count_params() == count
    assert count == 16 * 768 + (4 * 16 * 16 + 2 * 16) + (16 * 32 + 32 + 32 * 16 + 16 + 2 * 16) \
        + 16 * 256 + 256


# Variants the experiments do not use, to exercise every term of the formula: pre-norm
# ("n" / "da": norms before each sub-layer plus final norms), learned positions in an
# encoder-decoder model, DMOL with an encoder, a class table with learned positions.
VARIANTS = [
    ("celeba_sr_local1d_cat.gin", ['layer_preprocess_sequence = "n"',
                                   'layer_postprocess_sequence = "da"']),
    ("celeba_sr_local2d_cat.gin", ['pos = "emb"', 'layer_postprocess_sequence = "dana"']),
    ("cifar10_sr_local1d_cat.gin", ['likelihood = "dmol"', "num_mixtures = 3"]),
    ("cifar10_local1d_dmol_14l.gin", ['layer_preprocess_sequence = "n"',
                                      'layer_postprocess_sequence = "da"']),
    ("cifar10_cond_local1d_cat_8l.gin", ['pos = "emb"', "key_channels = 64",
                                         "value_channels = 96"]),
]


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_formula_covers_variants(name, overrides):
    parse_gin([f"experiments/{name}"], [])
    ref = model_selector()
    parse_gin([], reduced_size_params(ref.selector)
              + [f"{ref.selector}.{o}" for o in overrides])
    model = build_through_gin(ref)
    assert model.count_params() == expected_params(hyperparameters(ref.selector))


def test_img2img_forward_pass_creates_no_variables_beyond_build():
    parse_gin(["experiments/celeba_sr_local2d_cat.gin"], [])
    ref = model_selector()
    small = ["input_height = 4", "input_width = 4", "image_height = 16", "image_width = 16",
             "num_encoder_layers = 1", "num_decoder_layers = 1"]
    parse_gin([], reduced_size_params(ref.selector) + [f"{IMG2IMG}.{o}" for o in small])
    model = build_through_gin(ref)
    count = model.count_params()
    logits = model({"inputs": np.zeros((1, 4, 4, 3), "uint8"),
                    "targets": np.zeros((1, 16, 16, 3), "uint8")})
    assert tuple(logits.shape) == (1, 16, 16, 3, 256)
    assert model.count_params() == count == expected_params(hyperparameters(IMG2IMG))


# ----------------------------------------------------------------- bad input
def test_unknown_binding_is_named():
    with pytest.raises(ValueError, match="num_train_stepz"):
        parse_gin(["experiments/cifar10_local1d_cat_12l_b256.gin"],
                  ["t2t_image.Trainer.num_train_stepz = 5"])


def test_misspelled_configurable_is_named():
    with pytest.raises(ValueError, match="ImageTransformr"):
        parse_gin(["experiments/cifar10_local1d_cat_12l_b256.gin"],
                  ["t2t_image.ImageTransformr.hidden_size = 64"])


def test_missing_gin_file_is_named():
    with pytest.raises(FileNotFoundError, match="cifar10_local1d_cat_13l.gin"):
        parse_gin(["experiments/cifar10_local1d_cat_13l.gin"], [])


def test_missing_included_file_is_named(tmp_path):
    bad = tmp_path / "bad_experiment.gin"
    bad.write_text("include 'models/local1d_cat_13l.gin'\n")
    with pytest.raises(ValueError, match="models/local1d_cat_13l.gin"):
        parse_gin([str(bad)], [])


def test_misspelled_model_hyperparameter_is_named_when_the_model_is_built():
    # The model classes take **kwargs (keras.Model), so gin cannot reject the name while
    # parsing; constructing the model (Trainer.build, before any step) rejects it.
    parse_gin(["experiments/cifar10_local1d_cat_12l_b256.gin"],
              ["t2t_image.ImageTransformer.hiden_size = 64"])
    with pytest.raises(ValueError, match="hiden_size"):
        model_selector().scoped_configurable_fn()
