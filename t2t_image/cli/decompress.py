"""t2t-image-decompress: the images of t2t-image-compress files, exactly.

    t2t-image-decompress --model_dir=D --output=images.npz images.t2tc
    t2t-image-decompress --model_dir=D --output=folder/ folder/*.t2tc   # PNGs
    t2t-image-decompress --model_dir=D --output=image.png image.t2tc
    t2t-image-decompress --preset=cifar10_32_uncond --output=images.npz images.t2tc

Needs the model that compressed the files (its content fingerprint is in
each file), the same Keras backend, and by default the same versions and
device type (``--allow_other_versions`` tries anyway; the CRC-32 of the
original pixels in the file still refuses a wrong result). Every file is
decoded and checked before anything is written: on an error (another model,
another format version, a corrupted or truncated file) the tool prints one
line and writes nothing. See docs/compression.md.
"""

import time

from absl import app
from absl import flags

from t2t_image.cli.compress import load
from t2t_image.cli.lazy_flags import LazyFlags

FLAGS = flags.FLAGS
_FLAGS = LazyFlags()


def define_flags():
    """Defines the tool's absl flags (at most once; shared names are reused)."""
    define = _FLAGS.define
    _FLAGS.define_model_source("A .keras file or TF checkpoint prefix to use instead of the "
                               "model directory's latest.")
    define("string", "output", None, "A folder (PNGs), a .png (one image) or an .npz to write.")
    define("boolean", "allow_other_versions", False, "Decode files made with other Keras or "
           "backend versions or another device type (the pixel checksum still checks them).")
    define("boolean", "overwrite", False, "Replace existing output files.")


def main(argv):
    """Checks the flags, loads the model, decodes and checks every file, writes the images."""
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give the .t2tc files to decompress as arguments (after the flags).")
    _FLAGS.check_model_source()
    if not FLAGS.output:
        raise app.UsageError("--output is required (a folder, a .png or an .npz).")
    from t2t_image.cli import errors

    model, fingerprint = load(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.preset)
    from t2t_image.compression import files

    start = time.time()
    with errors.user_errors():
        result = files.decompress_files(model, paths, FLAGS.output, fingerprint,
                                        FLAGS.allow_other_versions, FLAGS.overwrite)
    seconds = time.time() - start
    print(f"Decompressed {result['images']} images into {FLAGS.output} (pixels checked against "
          f"the files' CRC-32); {result['images'] / seconds:.2f} images/s including compilation")


def run():
    """Console-script entry point."""
    define_flags()
    _FLAGS.run(main, __doc__)


if __name__ == "__main__":
    run()
