"""Input pipelines: CIFAR-10, downsampled ImageNet, CelebA and image folders.

Entry point: ``make_dataset`` (``pipeline.py``). Sources, selectable by name:
``tfds`` (``TfdsSource``), ``cifar10_archive`` (``Cifar10ArchiveSource``),
``npz`` (``NpzSource``), ``image_folder`` (``ImageFolderSource``).
"""

from t2t_image.data.cifar10_archive import (
    CIFAR10_LABEL_NAMES,
    Cifar10ArchiveSource,
    load_cifar_pickle,
    parse_cifar_batch,
    read_cifar10_files,
    safe_extract_tar,
)
from t2t_image.data.image_folder import ImageFolderSource, SkippedFiles, decode_image_file
from t2t_image.data.imagenet import IMAGENET_VERSIONS
from t2t_image.data.npz_source import NpzSource
from t2t_image.data.pipeline import SOURCES, TASKS, DatasetInfo, get_source, make_dataset
from t2t_image.data.preprocess import CELEBA_CROP_BOX, area_resize
from t2t_image.data.sources import Source, SplitData
from t2t_image.data.splits import parse_split
from t2t_image.data.tfds_source import TfdsSource

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
    "parse_cifar_batch",
    "parse_split",
    "read_cifar10_files",
    "safe_extract_tar",
]
