"""t2t-image-compress: lossless compression of images with a trained Image Transformer.

    t2t-image-compress --model_dir=D --output=images.t2tc a.png b.png ...
    t2t-image-compress --preset=cifar10_32_uncond --output=images.t2tc images.npz
    t2t-image-compress --model_dir=D --output=folder/ images.npz   # one file per image
    ... --label=3                      # class-conditional model (or the npz's labels)

Each image costs about the model's bits/dim times its sub-pixels, plus 26
bytes of header and checksums per file (a few more per image in a file of
many). One output file codes its images together in batches of
``--batch_size`` (fast; decompression runs the same batches); a folder gets
one file per image, each coded alone so that it decodes alone (slower).
Images must have the model's size (PNG, JPEG, anything Pillow reads, or an
``.npz`` of uint8 images ``[n, h, w, 3]`` with optional ``labels``/``y``).
Super-resolution models code the image's area-downsampled input raw, then
the image given it. See docs/compression.md and
``t2t_image.compression``. Bad flags or inputs stop the tool with one line
naming them before the model is loaded; nothing is written on an error.
"""

import sys
import time

from absl import app
from absl import flags

from t2t_image.cli.lazy_flags import LazyFlags

FLAGS = flags.FLAGS
_FLAGS = LazyFlags()


def define_flags():
    """Defines the tool's absl flags (at most once; shared names are reused)."""
    define = _FLAGS.define
    _FLAGS.define_model_source("A .keras file or TF checkpoint prefix to use instead of the "
                               "model directory's latest.")
    define("string", "output", None, "The .t2tc file to write, or a folder (one file per image).")
    define("integer", "label", None, "Class of every image (class-conditional models; default: "
           "the labels of an .npz input).")
    define("integer", "batch_size", 32, "Images coded together (memory grows with it).")
    define("boolean", "overwrite", False, "Replace existing output files.")


def main(argv):
    """Checks the flags, reads the images, loads the model, compresses, prints the sizes."""
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give the images to compress as arguments (after the flags).")
    _FLAGS.check_model_source()
    if not FLAGS.output:
        raise app.UsageError("--output is required (a .t2tc file or a folder).")
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size must be >= 1, got {FLAGS.batch_size}.")
    from t2t_image.cli import errors

    errors.import_tensorflow_quietly()  # TF's start-up log lines stay hidden
    from t2t_image.compression import files

    with errors.user_errors():
        files.read_images(paths)  # refuse unreadable inputs before loading the model
    model, fingerprint = load(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.preset)
    start = time.time()
    with errors.user_errors():
        result = files.compress_files(model, paths, FLAGS.output, FLAGS.label, FLAGS.batch_size,
                                      fingerprint, FLAGS.overwrite)
    seconds = time.time() - start
    total = sum(result["bytes"])
    dims = result["images"] * result["dims"]
    where = FLAGS.output if len(result["files"]) == 1 else f"{len(result['files'])} files in " \
        f"{FLAGS.output}"
    print(f"Compressed {result['images']} images into {where}: {total} bytes, "
          f"{8 * total / dims:.4f} bits/dim (the model: {result['model_bits'].sum() / dims:.4f}); "
          f"{result['images'] / seconds:.2f} images/s including compilation")


def load(model_dir, checkpoint, preset=None):
    """The model and its content fingerprint, or a usage error naming the flag.

    A preset's fingerprint is the one in its metadata (checked against its
    files when it loads); a model directory's is the SHA-256 of its weights.
    """
    from t2t_image.cli import errors

    errors.import_tensorflow_quietly()  # (once: a no-op after the first call)
    from t2t_image.compression import codec

    try:
        if preset:
            from t2t_image.storage import presets

            loaded = presets.load(preset)
            model, source = loaded.model, f"preset {loaded.folder}"
            fingerprint = loaded.metadata["fingerprint"]
        else:
            from t2t_image.storage.model_loading import load_model

            model, source = load_model(model_dir, checkpoint)
            fingerprint = None
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    with errors.user_errors():
        codec.check_model(model)
    print(f"Loaded {type(model).__name__} from {source}", file=sys.stderr)
    return model, fingerprint or codec.weights_fingerprint(model)


def run():
    """Console-script entry point."""
    define_flags()
    _FLAGS.run(main, __doc__)


if __name__ == "__main__":
    run()
