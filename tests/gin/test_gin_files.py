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

Two-stage ("Taming Transformers", Esser et al. 2021) experiments come in two
kinds. First stages (root ``t2t_image.train_job.trainer_class =
@t2t_image.FirstStageTrainer``) build a ``VQAutoencoder`` and a
``PatchDiscriminator`` through gin, at full size and from input shapes only,
and compare their counts with a formula written from the convolutional
layout (Sec. 3.1). Priors (experiments including ``datasets/codes.gin``) are
Image Transformers over code grids (``num_channels=1``, ``vocab_size=K``):
the same formula with ``vocab_size``, plus checks that they pair with the
first stage named by their ``FIRST_STAGE_DIR``. The data of a prior is never
read here (it needs a trained first stage).
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
PRESET_FILES = sorted((GIN_DIR / "presets").glob("*.gin"))
CODES_GIN = "datasets/codes.gin"
FIRST_STAGE_ROOT = "t2t_image.train_job.trainer_class = @t2t_image.FirstStageTrainer"

# First stages (VQ autoencoder + discriminator) and priors over their code grids.
FIRST_STAGES = [p for p in EXPERIMENTS if FIRST_STAGE_ROOT in p.read_text()]
PRIORS = [p for p in EXPERIMENTS if f"include '{CODES_GIN}'" in p.read_text()]
# Image Transformer experiments: everything but the first stages (priors included).
TRANSFORMERS = [p for p in EXPERIMENTS if p not in FIRST_STAGES]

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
    # Priors over code grids (num_channels 1, vocab_size K): built at reduced width.
    "celeba32_codes_local1d_cat.gin": 25_727_488,
    "celeba64_codes_local2d_cat.gin": 38_853_632,
    "imagenet64_codes_local2d_cat.gin": 38_853_632,
}

# Full-size counts of the first stages, built at full size: (VQAutoencoder.count_params(),
# of which trainable, PatchDiscriminator.count_params()). The autoencoder's count includes
# the EMA codebook K * n_z and its non-trainable statistics (usage K, EMA counts K, EMA
# sums K * n_z). A change of vqgan_f4.gin must update this table (and the README).
FIRST_STAGE_PARAMS = {
    "celeba32_vqgan_f4.gin": (3_339_395, 3_272_835, 663_361),
    "celeba64_vqgan_f4.gin": (3_405_955, 3_272_835, 663_361),
    "imagenet64_vqgan_f4.gin": (3_405_955, 3_272_835, 663_361),
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
VQ = "t2t_image.VQAutoencoder"
DISCRIMINATOR = "t2t_image.PatchDiscriminator"
FIRST_STAGE_TRAINER = "t2t_image.FirstStageTrainer"

# Hyperparameters every first-stage model file binds explicitly.
VQ_PARAMS = ("image_height", "image_width", "num_channels", "base_channels",
             "channel_multipliers", "num_res_blocks", "codebook_size", "code_dim",
             "commitment_cost", "codebook_update", "ema_decay", "dead_code_threshold")
DISCRIMINATOR_PARAMS = ("base_channels", "num_layers", "norm", "norm_groups")


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
    for name in ("num_mixtures", "num_classes", "block_length", "query_shape", "memory_flange",
                 "num_channels", "vocab_size"):
        try:
            hp[name] = query(f"{selector}.{name}")
        except ValueError:
            hp[name] = defaults[name]
    if cls is models.Img2ImgTransformer:
        hp["num_classes"] = None
    return hp


def expected_params(hp):
    """Parameter count of an Image Transformer with hyperparameters ``hp``, by formula.

    Embedding: vocab_size * C * d (categorical, channel-specific table of ``vocab_size``
    values, 256 for images and the codebook size K for a prior over codes, times C
    channels, 3 for images and 1 for code grids) or a 1x3 convolution 3 * d + d (DMOL).
    Positions "emb": a row and a column table, (rows + cols) * d on the position grid
    ([H, C*W] categorical, [H, W] DMOL); "timing" has none. Class table
    num_classes * d. Per layer: attention q, k, v, o without bias
    (d*kc + d*kc + d*vc + vc*d), an encoder-decoder attention of the same size in Img2Img
    decoder layers, FFN d*f + f + f*d + d, and a layer norm (2d) per 'n' of the pre and post
    sequences per sub-layer; a final norm when the pre sequence has 'n'. Output:
    d * vocab_size + vocab_size (categorical) or d * 10K without bias (DMOL, K mixtures).
    Img2Img adds its encoder: its own 256 * C * d input embedding (8-bit inputs whatever
    vocab_size; + positions), encoder layers and the same final-norm rule.
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
    channels, vocab = hp["num_channels"], hp["vocab_size"]
    assert cat or (channels, vocab) == (3, 256), hp  # DMOL models 8-bit RGB only
    rows, cols = hp["image_height"], hp["image_width"] * (channels if cat else 1)
    encdec = "input_height" in hp

    total = vocab * channels * d if cat else 3 * d + d
    if hp["pos"] == "emb":
        total += (rows + cols) * d
    if hp["num_classes"]:
        total += hp["num_classes"] * d
    total += hp["num_decoder_layers"] * (attention + (attention if encdec else 0) + ffn)
    total += final_norm
    total += d * vocab + vocab if cat else d * 10 * hp["num_mixtures"]
    if encdec:
        total += 256 * channels * d
        if hp["pos"] == "emb":
            total += (hp["input_height"] + channels * hp["input_width"]) * d
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
    shapes = {"targets": (None, model.image_height, model.image_width, model.num_channels)}
    if ref.selector == IMG2IMG:
        shapes["inputs"] = (None, model.input_height, model.input_width, model.num_channels)
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


def conv_params(kernel, cin, cout, bias=True):
    """A k x k convolution: k * k * cin * cout kernel entries (+ cout biases)."""
    return kernel * kernel * cin * cout + (cout if bias else 0)


def group_norm_params(channels):
    """A group normalization: a scale and an offset per channel."""
    return 2 * channels


def residual_block_params(cin, cout):
    """ResidualConvBlock: norm, 3x3 conv, norm, 3x3 conv, a 1x1 skip conv if cin != cout."""
    total = group_norm_params(cin) + conv_params(3, cin, cout)
    total += group_norm_params(cout) + conv_params(3, cout, cout)
    return total + (conv_params(1, cin, cout) if cin != cout else 0)


def expected_vq_params(hp):
    """(all, trainable) parameter counts of a VQAutoencoder with hyperparameters ``hp``.

    Esser et al. 2021, Sec. 3.1, without attention blocks. Encoder: a 3x3 conv C -> b;
    per level i (channels b * m_i) ``num_res_blocks`` residual blocks (the first one from
    the previous level's channels), then, except after the last level, a strided 3x3 conv
    keeping the channels; group norm and a 3x3 conv to n_z. Decoder (levels in reverse):
    a 3x3 conv n_z -> b * m_last; per level the residual blocks, then, except after
    level 0, a 3x3 conv after the 2x upsample; group norm and a 3x3 conv to C. Every conv
    has a bias. Quantizer: the codebook K * n_z and a usage EMA K; with "ema" updates the
    codebook is not trainable and EMA counts K and sums K * n_z are added.
    """
    base, mults, nres = hp["base_channels"], hp["channel_multipliers"], hp["num_res_blocks"]
    channels, code_dim, k = hp["num_channels"], hp["code_dim"], hp["codebook_size"]
    encoder = conv_params(3, channels, base)
    cin = base
    for level, m in enumerate(mults):
        for _ in range(nres):
            encoder += residual_block_params(cin, base * m)
            cin = base * m
        if level != len(mults) - 1:
            encoder += conv_params(3, cin, cin)
    encoder += group_norm_params(cin) + conv_params(3, cin, code_dim)

    cin = base * mults[-1]
    decoder = conv_params(3, code_dim, cin)
    for level in reversed(range(len(mults))):
        for _ in range(nres):
            decoder += residual_block_params(cin, base * mults[level])
            cin = base * mults[level]
        if level != 0:
            decoder += conv_params(3, cin, cin)
    decoder += group_norm_params(cin) + conv_params(3, cin, channels)

    ema = hp["codebook_update"] == "ema"
    codebook, usage = k * code_dim, k
    ema_state = k + k * code_dim if ema else 0
    total = encoder + decoder + codebook + usage + ema_state
    trainable = encoder + decoder + (0 if ema else codebook)
    return total, trainable


def expected_discriminator_params(hp, image_channels):
    """Parameter count of a PatchDiscriminator (pix2pix PatchGAN, Isola et al. 2017).

    4x4 convs with b * min(2**n, 8) outputs, n = 0..num_layers; the first has a bias and
    no norm; the others, with norm="group", no bias and a group norm (2 * channels each),
    with norm="none" a bias. Then a 4x4 conv to one logit with a bias.
    """
    base, layers, normalized = hp["base_channels"], hp["num_layers"], hp["norm"] != "none"
    total, cin = 0, image_channels
    for n in range(layers + 1):
        cout = base * min(2 ** n, 8)
        has_norm = normalized and n > 0
        total += conv_params(4, cin, cout, bias=not has_norm)
        total += group_norm_params(cout) if has_norm else 0
        cin = cout
    return total + conv_params(4, cin, 1)


def vq_hyperparameters():
    """The bound VQAutoencoder and PatchDiscriminator hyperparameters (raise if unbound)."""
    vq = {name: query(f"{VQ}.{name}") for name in VQ_PARAMS}
    vq["channel_multipliers"] = tuple(vq["channel_multipliers"])
    disc = {name: query(f"{DISCRIMINATOR}.{name}") for name in DISCRIMINATOR_PARAMS}
    return vq, disc


def reference(binding, selector):
    """The configurable reference bound to ``binding``: ``@selector``, never a call."""
    ref = gin.query_parameter(binding)
    assert isinstance(ref, gin.config.ConfigurableReference), (binding, ref)
    assert not ref.evaluate, f"{binding} must be a reference (@X), not a call (@X())"
    assert ref.scoped_selector == selector, (binding, ref.scoped_selector)
    return ref


def build_first_stage_through_gin():
    """The configured VQAutoencoder and PatchDiscriminator, built from input shapes only."""
    reference("t2t_image.train_job.trainer_class", FIRST_STAGE_TRAINER)
    model = reference(f"{FIRST_STAGE_TRAINER}.model_fn", VQ).scoped_configurable_fn()
    shape = (None, model.image_height, model.image_width, model.num_channels)
    model.build({"targets": shape})
    disc = reference(f"{FIRST_STAGE_TRAINER}.discriminator_fn",
                     DISCRIMINATOR).scoped_configurable_fn()
    disc.build(shape)
    return model, disc


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def data_signature():
    """What the train/ and eval/ image pipelines read (source, split, task, version)."""
    out = {}
    for scope in ("train", "eval"):
        source = gin.query_parameter(f"{scope}/t2t_image.make_dataset.source")
        out[scope] = (source.selector,) + tuple(
            query(f"{scope}/t2t_image.make_dataset.{name}")
            for name in ("split", "task", "imagenet_version"))
        cls = source.selector
        for name in ("name", "crop_box", "path", "image_key", "label_key"):
            try:
                out[f"{cls}.{name}"] = query(f"{cls}.{name}")
            except ValueError:
                pass
    return out


def first_stage_facts():
    """(image size, code grid side, codebook size, data) of the parsed first stage."""
    vq, _ = vq_hyperparameters()
    assert vq["image_height"] == vq["image_width"], vq
    factor = 2 ** (len(vq["channel_multipliers"]) - 1)
    assert vq["image_height"] % factor == 0, vq
    return vq["image_height"], vq["image_height"] // factor, vq["codebook_size"], data_signature()


def prior_facts():
    """(image size, code grid side, vocab size, data) of the parsed prior."""
    hp = hyperparameters(IMAGE_TRANSFORMER)
    assert hp["image_height"] == hp["image_width"], hp
    size = query("train/t2t_image.make_dataset.image_size")
    return size, hp["image_height"], hp["vocab_size"], data_signature()


def check_code_dataset_bindings():
    """The Trainer reads code grids: make_code_dataset of the train/ and eval/ image data."""
    reference("t2t_image.Trainer.train_dataset_fn", "train/t2t_image.make_code_dataset")
    reference("t2t_image.Trainer.eval_dataset_fn", "eval/t2t_image.make_code_dataset")
    for scope, training in (("train", True), ("eval", False)):
        code = f"{scope}/t2t_image.make_code_dataset"
        reference(f"{code}.image_dataset_fn", f"{scope}/t2t_image.make_dataset")
        assert query(f"{code}.training") is training
        assert query(f"{code}.batch_size") == query("BATCH_SIZE/gin.macro.value")
        assert query(f"{code}.first_stage_dir") == query("FIRST_STAGE_DIR/gin.macro.value")


# --------------------------------------------------------------- experiments
def test_every_experiment_has_a_pinned_parameter_count():
    assert {p.name for p in TRANSFORMERS} == set(FULL_SIZE_PARAMS)
    assert {p.name for p in FIRST_STAGES} == set(FIRST_STAGE_PARAMS)
    assert set(PRIORS) <= set(TRANSFORMERS) and FIRST_STAGES and PRIORS


@pytest.mark.parametrize("path", TRANSFORMERS, ids=ids(TRANSFORMERS))
def test_experiment_builds_with_the_formula_parameter_count(path):
    parse_gin([str(path.relative_to(GIN_DIR))], [])
    ref = model_selector()
    full = hyperparameters(ref.selector)
    assert expected_params(full) == FULL_SIZE_PARAMS[path.name]
    if path.name not in FULL_SIZE:
        parse_gin([], reduced_size_params(ref.selector))
    hp = hyperparameters(ref.selector)
    model = build_through_gin(ref)
    for name in ARCH_PARAMS + ("num_classes", "block_length", "num_channels", "vocab_size"):
        assert getattr(model, name) == hp[name], name  # gin -> model wiring
    assert model.built and model.count_params() > 0
    assert model.count_params() == expected_params(hp)


@pytest.mark.parametrize("path", FIRST_STAGES, ids=ids(FIRST_STAGES))
def test_first_stage_builds_with_the_formula_parameter_count(path):
    parse_gin([str(path.relative_to(GIN_DIR))], [])
    vq_hp, disc_hp = vq_hyperparameters()
    model, disc = build_first_stage_through_gin()
    for name in VQ_PARAMS:
        assert getattr(model, name) == vq_hp[name], name  # gin -> model wiring
    for name in DISCRIMINATOR_PARAMS:
        assert getattr(disc, name) == disc_hp[name], name
    assert model.built and disc.built
    total, trainable = expected_vq_params(vq_hp)
    disc_total = expected_discriminator_params(disc_hp, vq_hp["num_channels"])
    assert (model.count_params(), trainable_count(model), disc.count_params()) \
        == (total, trainable, disc_total) == FIRST_STAGE_PARAMS[path.name]
    assert trainable_count(disc) == disc_total


def test_first_stage_formula_covers_variants():
    # Terms the experiments do not use: a trainable codebook ("loss"), a skip conv in the
    # decoder's first block (growing multipliers), three levels of downsampling, and a
    # discriminator without norms (every conv with a bias).
    parse_gin(["experiments/celeba32_vqgan_f4.gin"],
              [f"{VQ}.codebook_update = 'loss'", f"{VQ}.channel_multipliers = (1, 2, 4, 4)",
               f"{VQ}.base_channels = 8", f"{VQ}.num_res_blocks = 1", f"{VQ}.code_dim = 4",
               f"{DISCRIMINATOR}.norm = 'none'", f"{DISCRIMINATOR}.num_layers = 4",
               f"{DISCRIMINATOR}.base_channels = 4"])
    vq_hp, disc_hp = vq_hyperparameters()
    model, disc = build_first_stage_through_gin()
    assert (model.count_params(), trainable_count(model)) == expected_vq_params(vq_hp)
    assert disc.count_params() == expected_discriminator_params(disc_hp, 3)


def check_transformer_model_and_data_agree(path):
    ref = model_selector()
    hp = hyperparameters(ref.selector)
    if path in PRIORS:
        check_code_dataset_bindings()
        assert hp["num_classes"] is None  # the image data below is unconditional
    else:
        reference("t2t_image.Trainer.train_dataset_fn", "train/t2t_image.make_dataset")
        reference("t2t_image.Trainer.eval_dataset_fn", "eval/t2t_image.make_dataset")
    for scope, training in (("train", True), ("eval", False)):
        data = lambda name: query(f"{scope}/t2t_image.make_dataset.{name}")  # noqa: E731
        assert data("training") is training
        assert data("batch_size") == query("BATCH_SIZE/gin.macro.value")
        if path not in PRIORS:  # a prior's image size is its first stage's (see below)
            assert data("image_size") == hp["image_height"] == hp["image_width"]
        if ref.selector == IMG2IMG:
            assert data("task") == "super_resolution"
            assert data("input_size") == hp["input_height"] == hp["input_width"]
        elif hp["num_classes"] is None:
            assert data("task") == "unconditional"
        else:
            assert data("task") == "class_conditional"
    assert query("train/t2t_image.make_dataset.split") != query("eval/t2t_image.make_dataset.split")


def check_first_stage_model_and_data_agree():
    vq_hp, _ = vq_hyperparameters()
    reference(f"{FIRST_STAGE_TRAINER}.train_dataset_fn", "train/t2t_image.make_dataset")
    reference(f"{FIRST_STAGE_TRAINER}.eval_dataset_fn", "eval/t2t_image.make_dataset")
    first_stage_facts()  # square images divisible by the downsample factor
    for scope, training in (("train", True), ("eval", False)):
        data = lambda name: query(f"{scope}/t2t_image.make_dataset.{name}")  # noqa: E731
        assert data("training") is training
        assert data("batch_size") == query("BATCH_SIZE/gin.macro.value")
        assert data("image_size") == vq_hp["image_height"] == vq_hp["image_width"]
        assert data("task") == "unconditional"
    assert query("train/t2t_image.make_dataset.split") != query("eval/t2t_image.make_dataset.split")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_model_and_data_agree(path):
    parse_gin([str(path)], [])
    if path in FIRST_STAGES:
        check_first_stage_model_and_data_agree()
    else:
        check_transformer_model_and_data_agree(path)


# The offline data file an experiment's header suggests appending (--gin_file=...).
OFFLINE = [(p, m.group(1)) for p in EXPERIMENTS
           for m in re.finditer(r"--gin_file=gin/(datasets/\w+\.gin)", p.read_text())]


@pytest.mark.parametrize("path,offline", OFFLINE, ids=[f"{p.name}+{o}" for p, o in OFFLINE])
def test_offline_data_named_in_the_header_composes_with_the_experiment(path, offline):
    parse_gin([str(path)], [])
    before = data_signature()
    parse_gin([str(path), offline], [])
    assert data_signature() != before  # the offline file replaces the data source
    if path in FIRST_STAGES:
        check_first_stage_model_and_data_agree()
    else:
        check_transformer_model_and_data_agree(path)  # priors keep reading code grids


@pytest.mark.parametrize("path", PRIORS, ids=ids(PRIORS))
def test_prior_pairs_with_the_first_stage_of_its_first_stage_dir(path):
    parse_gin([str(path)], [])
    hp = hyperparameters(IMAGE_TRANSFORMER)
    for name in ("num_channels", "vocab_size"):
        query(f"{IMAGE_TRANSFORMER}.{name}")  # bound explicitly, not defaults
    assert hp["num_channels"] == 1 and hp["likelihood"] == "cat"
    first_stage_dir = query("FIRST_STAGE_DIR/gin.macro.value")
    prior = prior_facts()
    first_stage = GIN_DIR / "experiments" / (first_stage_dir.rstrip("/").split("/")[-1] + ".gin")
    assert first_stage in FIRST_STAGES, first_stage_dir
    # The first stage's header trains into the directory the prior reads.
    assert f"--model_dir={first_stage_dir} " in first_stage.read_text()
    gin.clear_config()
    parse_gin([str(first_stage)], [])
    # Same image size, code grid = image / f, vocab = codebook, same images.
    assert prior == first_stage_facts()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_header_names_t2t_set_paper_number_and_data(path):
    text = header(path)
    t2t = paragraph(text, "T2T hparams set:")
    data = paragraph(text, "Data:")
    assert data and re.search(r"\d+\.\d+\.\d+", data), data  # a dataset version
    if path in FIRST_STAGES or path in PRIORS:
        # T2T has no two-stage models: the header says so, names the paper section the
        # model follows, states that there is no paper number and what is reported.
        assert t2t and re.match(r"none \(.+\)", t2t.strip()), t2t
        whole = " ".join(line.strip() for line in text)
        assert re.search(r"Paper: Esser et al\. 2021, \"Taming Transformers[^\"]*\" \(Sec\. 3\.\d",
                         whole), whole
        assert "no paper number" in whole and re.search(r"\b[Rr]eport", whole), whole
        if path in PRIORS:  # sizes of a T2T set, and tokenized data
            assert re.search(r"\bimagetransformer\w*", t2t), t2t
            assert CODES_GIN in data, data
        return
    paper = paragraph(text, "Paper target:")
    assert t2t and re.search(r"\b(imagetransformer\w*|img2img_transformer\w*)", t2t), t2t
    assert paper and re.search(r"Table \d|\d\.\d\d", paper), paper


@pytest.mark.parametrize("path", PRESET_FILES, ids=ids(PRESET_FILES))
def test_preset_file_parses_from_the_repository_root_and_names_its_origin(path, monkeypatch):
    # From the repository root the folder experiments/ is importable as a namespace
    # package; gin's package probe of an include 'experiments/...' must not trip on it.
    monkeypatch.chdir(GIN_DIR.parent)
    monkeypatch.syspath_prepend(str(GIN_DIR.parent))
    parse_gin([str(path.relative_to(GIN_DIR.parent))], [])
    trainer = FIRST_STAGE_TRAINER if FIRST_STAGE_TRAINER in path.read_text() else "t2t_image.Trainer"
    assert gin.query_parameter(f"{trainer}.precision") == "mixed_bfloat16"
    assert gin.query_parameter(f"{trainer}.num_train_steps") > 0
    text = header(path)
    whole = " ".join(line.strip() for line in text)
    assert paragraph(text, "T2T hparams set:") and paragraph(text, "Paper number:"), whole
    assert "../shared/data" in paragraph(text, "Data:"), whole
    assert f"t2t-image-trainer --gin_file=gin/presets/{path.name}" in whole, whole


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_composes_one_model_and_one_dataset(path):
    lines, includes = bindings(path)
    expected = ["models", "datasets"] + (["datasets"] if path in PRIORS else [])
    assert [i.split("/")[0] for i in includes] == expected, includes
    if path in PRIORS:
        assert includes[-1] == CODES_GIN, includes  # tokenizes the image data before it
    for include in includes:
        assert (GIN_DIR / include).is_file(), include
    trainer = FIRST_STAGE_TRAINER if path in FIRST_STAGES else "t2t_image.Trainer"
    for key, _ in lines:
        assert (re.fullmatch(r"[A-Z_]+", key) or key.startswith(trainer + ".")
                or (path in FIRST_STAGES and key == "t2t_image.train_job.trainer_class")), key
        # The model file names the model (and discriminator), the data files the data;
        # a first stage binds its data itself (image data files serve priors as well).
        assert key not in (f"{trainer}.model_fn", f"{trainer}.discriminator_fn"), key
        if path not in FIRST_STAGES:
            assert key not in (f"{trainer}.train_dataset_fn", f"{trainer}.eval_dataset_fn"), key


@pytest.mark.parametrize("path", MODELS, ids=ids(MODELS))
def test_model_files_hold_architecture_only(path):
    lines, includes = bindings(path)
    assert not includes
    keys = [key for key, _ in lines if not re.fullmatch(r"[A-Z_]+", key)]
    if any(key.startswith(VQ + ".") for key in keys):  # a first stage
        allowed = (f"{FIRST_STAGE_TRAINER}.model_fn", f"{FIRST_STAGE_TRAINER}.discriminator_fn")
        prefixes = (VQ + ".", DISCRIMINATOR + ".")
        required = [f"{VQ}.{n}" for n in VQ_PARAMS] + [f"{DISCRIMINATOR}.{n}"
                                                      for n in DISCRIMINATOR_PARAMS]
    else:
        allowed = ("t2t_image.Trainer.model_fn",)
        prefixes = (IMAGE_TRANSFORMER + ".", IMG2IMG + ".")
        selector = IMG2IMG if any(k.startswith(IMG2IMG + ".") for k in keys) else IMAGE_TRANSFORMER
        required = [f"{selector}.{n}" for n in ARCH_PARAMS]
    for key in keys:
        assert key in allowed or key.startswith(prefixes), key
    assert set(allowed) <= set(keys) and set(required) <= set(keys), \
        set(allowed) - set(keys) | set(required) - set(keys)


# ------------------------------------------------------------------ datasets
IMAGE_DATASETS = [p for p in DATASETS if p.name != "codes.gin"]
# Macros the experiments define for their dataset files.
DATA_MACROS = ["BATCH_SIZE = 4", 'TASK = "unconditional"', "IMAGE_SIZE = 32"]


@pytest.mark.parametrize("path", IMAGE_DATASETS, ids=ids(IMAGE_DATASETS))
def test_dataset_file_parses_and_holds_data_only(path):
    lines, includes = bindings(path)
    assert not includes
    for key, _ in lines:
        assert key.startswith(("train/t2t_image.make_dataset.", "eval/t2t_image.make_dataset.",
                               "t2t_image.TfdsSource.", "t2t_image.NpzSource.",
                               "t2t_image.ImageFolderSource.", "t2t_image.Trainer.train_dataset_fn",
                               "t2t_image.Trainer.eval_dataset_fn")), key
    parse_gin([str(path)], DATA_MACROS)
    # Every dataset file binds the same settings, so appending one after an experiment
    # replaces all the data bindings of the experiment's own dataset file. input_size only
    # matters for super-resolution: files whose task is always "unconditional" may omit it.
    settings = ["source", "split", "batch_size", "task", "image_size", "imagenet_version",
                "training"]
    if ("train/t2t_image.make_dataset.task", '"unconditional"') not in lines:
        settings.append("input_size")
    for scope in ("train", "eval"):
        for name in settings:
            query(f"{scope}/t2t_image.make_dataset.{name}")
    source = gin.query_parameter("train/t2t_image.make_dataset.source")
    assert source.evaluate and source.selector.endswith("Source")
    assert query("train/t2t_image.make_dataset.split") != query("eval/t2t_image.make_dataset.split")
    # The Trainer reads these pipelines directly, or (files without Trainer bindings,
    # which a prior's codes.gin can follow) through the trainer of the experiment.
    keys = {key for key, _ in lines}
    trainer_fns = {"t2t_image.Trainer.train_dataset_fn", "t2t_image.Trainer.eval_dataset_fn"}
    assert trainer_fns <= keys or not trainer_fns & keys, keys & trainer_fns
    if trainer_fns <= keys:
        reference("t2t_image.Trainer.train_dataset_fn", "train/t2t_image.make_dataset")
        reference("t2t_image.Trainer.eval_dataset_fn", "eval/t2t_image.make_dataset")


def test_codes_file_binds_only_the_code_pipeline_of_the_image_data():
    path = GIN_DIR / CODES_GIN
    lines, includes = bindings(path)
    assert not includes
    for key, _ in lines:
        assert key.startswith(("train/t2t_image.make_code_dataset.",
                               "eval/t2t_image.make_code_dataset.",
                               "t2t_image.Trainer.train_dataset_fn",
                               "t2t_image.Trainer.eval_dataset_fn")), key
    parse_gin(["datasets/celeba32_shared.gin", CODES_GIN],
              DATA_MACROS + ['FIRST_STAGE_DIR = "/nonexistent/first_stage"'])
    check_code_dataset_bindings()  # nothing is read: the first stage does not exist
    assert query("train/t2t_image.make_code_dataset.first_stage_dir") == "/nonexistent/first_stage"


TFDS = [p for p in DATASETS if "t2t_image.TfdsSource.name" in p.read_text()]


@pytest.mark.parametrize("path", TFDS, ids=ids(TFDS))
def test_tfds_dataset_file_configures_a_source_without_network(path):
    parse_gin([str(path)], DATA_MACROS)
    source = gin.query_parameter("train/t2t_image.make_dataset.source").scoped_configurable_fn()
    version = query("train/t2t_image.make_dataset.imagenet_version")
    assert source.imagenet_version == version  # "oord" / "chrabaszcz" / None, as the file says
    assert (source.crop_box == "celeba") == ("celeb_a" in source.dataset_name)


SHARED = [p for p in DATASETS if p.name.endswith("_shared.gin")]


@pytest.mark.parametrize("path", SHARED, ids=ids(SHARED))
def test_shared_dataset_file_reads_the_offline_images(path, shared_data, monkeypatch):
    from t2t_image import configurables

    monkeypatch.chdir(REPO)  # the files name ../shared/data relative to the repository root
    parse_gin([str(path)], ["BATCH_SIZE = 3", 'TASK = "unconditional"', "IMAGE_SIZE = 16"])
    with gin.config_scope("train"):
        train_ds, train_info = configurables.make_dataset(with_info=True)
    with gin.config_scope("eval"):
        eval_ds, eval_info = configurables.make_dataset(with_info=True)
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


def test_tiny_vq_builds_with_the_formula_count_and_runs_forward():
    parse_gin(["tiny_vq.gin"], [])
    check_first_stage_model_and_data_agree()
    vq_hp, disc_hp = vq_hyperparameters()
    model, disc = build_first_stage_through_gin()
    count = (model.count_params(), trainable_count(model), disc.count_params())
    assert count == expected_vq_params(vq_hp) + (expected_discriminator_params(disc_hp, 3),)
    out = model({"targets": np.zeros((2, 16, 16, 3), "uint8")})
    assert tuple(out["reconstruction"].shape) == (2, 16, 16, 3)
    assert tuple(out["codes"].shape) == (2, 4, 4)
    assert tuple(disc(out["reconstruction"]).shape) == (2, 4, 4, 1)
    assert (model.count_params(), trainable_count(model), disc.count_params()) == count


def test_tiny_prior_builds_runs_forward_and_pairs_with_tiny_vq():
    # FIRST_STAGE_DIR is irrelevant here: the code pipeline is configured, never read.
    parse_gin(["tiny_prior.gin"], [])
    check_code_dataset_bindings()
    ref = model_selector()
    hp = hyperparameters(ref.selector)
    model = build_through_gin(ref)
    count = model.count_params()
    assert count == expected_params(hp)
    logits = model({"targets": np.zeros((2, 4, 4, 1), "int32")})
    assert tuple(logits.shape) == (2, 4, 4, 1, 32)
    assert model.count_params() == count
    prior = prior_facts()
    gin.clear_config()
    parse_gin(["tiny_vq.gin"], [])
    assert prior == first_stage_facts()  # 16x16 images, 4x4 codes, K = 32, same data


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


def test_dynamic_registration_file_with_registered_names_is_a_named_error(tmp_path):
    # Issue 24: gin's dynamic_registration mode resolves names through the file's imports;
    # `t2t_image.Trainer` there raised a raw NameError traceback.
    bad = tmp_path / "dynamic.gin"
    bad.write_text("from __gin__ import dynamic_registration\ninclude 'tiny.gin'\n"
                   "t2t_image.Trainer.num_train_steps = 3\n")
    with pytest.raises(ValueError, match=r"(?s)'t2t_image' was not provided by an import "
                       rf"statement.*{re.escape(str(bad))}\", line 3.*from t2t_image.training "
                       "import trainer"):
        parse_gin([str(bad)], [])
    # Through its imports, the same file works.
    gin.clear_config()
    good = tmp_path / "imports.gin"
    good.write_text("from __gin__ import dynamic_registration\n"
                    "from t2t_image.training import trainer\ninclude 'tiny.gin'\n"
                    "trainer.Trainer.num_train_steps = 3\n")
    parse_gin([str(good)], [])
    assert gin.query_parameter("t2t_image.Trainer.num_train_steps") == 3  # not tiny.gin's 6
