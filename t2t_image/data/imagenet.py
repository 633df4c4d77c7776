"""The two downsampled-ImageNet versions, which must not be confused.

* ``"oord"``: van den Oord, Kalchbrenner & Kavukcuoglu 2016 ("Pixel Recurrent
  Neural Networks"), published at image-net.org/small (``train_32x32.tar``,
  ``valid_32x32.tar``, ``*_64x64.tar``: PNG files, no labels). T2T's
  ``image_imagenet32`` / ``image_imagenet64`` problems download these, and the
  PixelRNN / PixelCNN / Image Transformer ImageNet bits/dim are on this version.
  TFDS name: ``downsampled_imagenet/32x32`` and ``/64x64``.
* ``"chrabaszcz"``: Chrabaszcz, Loshchilov & Hutter 2017 ("A Downsampled Variant
  of ImageNet as an Alternative to the CIFAR datasets"), box-resized, with the
  1000 class labels (``Imagenet32_train_npz.zip`` etc.). TFDS name:
  ``imagenet_resized/32x32`` and ``/64x64``.

The resizing differs, so bits/dim on one version is not comparable with
published numbers on the other. ``make_dataset`` logs which one a run uses.
"""

from __future__ import annotations

IMAGENET_VERSIONS = {
    "oord": (
        "van den Oord et al. 2016 (PixelRNN) downsampled ImageNet, image-net.org/small, "
        "unlabelled; the version of the PixelRNN/PixelCNN/Image Transformer bits/dim tables"
    ),
    "chrabaszcz": (
        "Chrabaszcz et al. 2017 downsampled ImageNet (box resize, labelled; TFDS "
        "imagenet_resized); bits/dim not comparable with the van den Oord version"
    ),
}


def check_imagenet_version(value, setting: str = "imagenet_version") -> str | None:
    """Validates an ImageNet version setting.

    Args:
      value: None, ``"oord"`` or ``"chrabaszcz"``.
      setting: the setting's name for error messages.

    Returns:
      The value.

    Raises:
      ValueError: naming the setting and the value otherwise.
    """
    if value is not None and value not in IMAGENET_VERSIONS:
        raise ValueError(f"{setting} must be None, 'oord' or 'chrabaszcz', got {value!r}")
    return value


def resolve_imagenet_version(configured, intrinsic, source_description: str) -> str | None:
    """Combines the configured version with the one the source implies.

    Args:
      configured: the ``imagenet_version`` setting of ``make_dataset``.
      intrinsic: the version the source's data is known to be (e.g. ``"chrabaszcz"``
        for TFDS ``imagenet_resized``), or None.
      source_description: for the error message.

    Returns:
      The version in use, or None when the data is not marked as ImageNet.

    Raises:
      ValueError: when the two disagree.
    """
    check_imagenet_version(configured)
    if configured is not None and intrinsic is not None and configured != intrinsic:
        raise ValueError(
            f"imagenet_version={configured!r} contradicts the source {source_description}, "
            f"which is the {intrinsic!r} version ({IMAGENET_VERSIONS[intrinsic]})"
        )
    return configured if configured is not None else intrinsic
