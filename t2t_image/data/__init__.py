"""Input pipelines: CIFAR-10, downsampled ImageNet, CelebA and image folders.

Entry point: ``make_dataset`` (``pipeline.py``). Sources, selectable by name:
``tfds`` (``TfdsSource``), ``cifar10_archive`` (``Cifar10ArchiveSource``),
``npz`` (``NpzSource``), ``image_folder`` (``ImageFolderSource``).
"""

import importlib

# Imported on first use, so that the NumPy pipeline (numpy_pipeline.py) and the
# npz / CIFAR archive sources load without TensorFlow (the JAX backend).
_WHERE = {
    "CIFAR10_LABEL_NAMES": "cifar10_archive",
    "Cifar10ArchiveSource": "cifar10_archive",
    "load_cifar_pickle": "cifar10_archive",
    "parse_cifar_batch": "cifar10_archive",
    "read_cifar10_files": "cifar10_archive",
    "safe_extract_tar": "cifar10_archive",
    "ImageFolderSource": "image_folder",
    "SkippedFiles": "image_folder",
    "decode_image_file": "image_folder",
    "IMAGENET_VERSIONS": "imagenet",
    "NpzSource": "npz_source",
    "SOURCES": "pipeline",
    "TASKS": "options",
    "DatasetInfo": "options",
    "get_source": "pipeline",
    "make_dataset": "pipeline",
    "make_numpy_dataset": "numpy_pipeline",
    "CELEBA_CROP_BOX": "preprocess",
    "area_resize": "preprocess",
    "Source": "sources",
    "SplitData": "sources",
    "parse_split": "splits",
    "TfdsSource": "tfds_source",
}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "CELEBA_CROP_BOX",
    "CIFAR10_LABEL_NAMES",
    "Cifar10ArchiveSource",
    "DatasetInfo",
    "IMAGENET_VERSIONS",
    "ImageFolderSource",
    "NpzSource",
    "SOURCES",
    "SkippedFiles",
    "Source",
    "SplitData",
    "TASKS",
    "TfdsSource",
    "area_resize",
    "decode_image_file",
    "get_source",
    "load_cifar_pickle",
    "make_dataset",
    "make_numpy_dataset",
    "parse_cifar_batch",
    "parse_split",
    "read_cifar10_files",
    "safe_extract_tar",
]
