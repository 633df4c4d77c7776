"""The ``tfds`` source: datasets prepared by tensorflow-datasets, never hanging offline.

Supported names (others work too when their image and label features are named
``image`` / ``label``, or ``image_key`` / ``label_key`` say otherwise):

* ``cifar10`` - TFDS builds it from the *binary* version ``cifar-10-binary.tar.gz``;
  the python version is read by the ``cifar10_archive`` source instead.
* ``imagenet_resized/32x32``, ``imagenet_resized/64x64`` - the Chrabaszcz et al.
  2017 downsampled ImageNet (labelled).
* ``downsampled_imagenet/32x32``, ``/64x64`` - the van den Oord et al. 2016
  version (unlabelled), the one the Image Transformer paper reports.
* ``celeb_a`` - 218x178 aligned faces; by default cropped to T2T's 138x138 face
  box before resizing.

Where the data comes from, in this order:

1. ``data_dir`` already holds the prepared dataset (``tfds build`` or an earlier
   run): it is read, no network.
2. ``manual_dir`` holds the original download files (e.g. ``cifar-10-binary.tar.gz``):
   TFDS prepares the dataset from them into ``data_dir`` with GCS disabled; TFDS
   uses a file in ``manual_dir`` whose name matches the download instead of
   fetching it. Missing files are listed before anything starts.
3. ``download=True``: TFDS downloads. First every download host is probed with a
   short TCP connect (``probe_timeout`` seconds); an unreachable host fails at
   once rather than in TFDS's download retries.

Otherwise ``load`` raises FileNotFoundError within seconds, saying how to
provide the data.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

import tensorflow as tf

from t2t_image.data import preprocess
from t2t_image.data.sources import Source, SplitData

# Files each dataset downloads (the TFDS url_infos list every config of a builder).
MANUAL_FILES = {
    "cifar10": ("cifar-10-binary.tar.gz",),
    "imagenet_resized/32x32": ("Imagenet32_train_npz.zip", "Imagenet32_val_npz.zip"),
    "imagenet_resized/64x64": (
        "Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip"),
    "downsampled_imagenet/32x32": ("train_32x32.tar", "valid_32x32.tar"),
    "downsampled_imagenet/64x64": ("train_64x64.tar", "valid_64x64.tar"),
}
TFDS_IMAGENET_VERSIONS = {"imagenet_resized": "chrabaszcz", "downsampled_imagenet": "oord"}


class TfdsSource(Source):
    """A dataset from tensorflow-datasets (see the module docstring for data locations).

    Splits are TFDS split strings (``"train"``, ``"test"``, ``"train[:90%]"``, ...).

    Args:
      name: the TFDS name, e.g. ``"cifar10"``, ``"imagenet_resized/32x32"``, ``"celeb_a"``.
      data_dir: where prepared datasets live (default: TFDS's, ``~/tensorflow_datasets``
        or ``$TFDS_DATA_DIR``).
      manual_dir: a folder with the original download files to prepare from, offline.
      download: allow TFDS to download (default False: fail fast when not prepared).
      image_key: the image feature (default ``"image"``).
      label_key: the class label feature (default ``"label"``).
      crop_box: ``"auto"`` (T2T's CelebA box for ``celeb_a``, else none), None,
        ``"celeba"`` or ``(top, left, height, width)``.
      probe_timeout: seconds for the reachability probe when ``download=True``.
    """

    name = "tfds"

    def __init__(self, name="cifar10", *, data_dir=None, manual_dir=None, download=False,
                 image_key="image", label_key="label", crop_box="auto", probe_timeout=3.0):
        if not isinstance(name, str) or not name:
            raise ValueError(f"tfds.name must be a TFDS dataset name such as 'cifar10', got {name!r}")
        for setting, value in (("data_dir", data_dir), ("manual_dir", manual_dir)):
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
                raise ValueError(f"tfds.{setting} must be a path or None, got {value!r}")
        if not isinstance(download, bool):
            raise ValueError(f"tfds.download must be a bool, got {download!r}")
        if not isinstance(probe_timeout, (int, float)) or probe_timeout <= 0:
            raise ValueError(f"tfds.probe_timeout must be a positive number, got {probe_timeout!r}")
        self.dataset_name = name
        self.data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else None
        self.manual_dir = os.path.expanduser(os.fspath(manual_dir)) if manual_dir is not None else None
        if self.manual_dir is not None and not os.path.isdir(self.manual_dir):
            raise FileNotFoundError(f"tfds.manual_dir: {self.manual_dir} does not exist or is not a folder")
        self.download = download
        self.image_key, self.label_key = image_key, label_key
        base = name.split(":")[0].split("/")[0]
        if crop_box == "auto":
            crop_box = "celeba" if base == "celeb_a" else None
        self.crop_box = preprocess.validate_crop_box(crop_box, "tfds.crop_box")
        self.probe_timeout = float(probe_timeout)
        self.imagenet_version = TFDS_IMAGENET_VERSIONS.get(base)
        self._builder = None

    def describe(self) -> str:
        where = self.data_dir or "default data_dir"
        # Every setting that changes what is read (the code-grid cache keys on this).
        return (f"tfds({self.dataset_name}, {where}, image_key={self.image_key!r}, "
                f"label_key={self.label_key!r}, crop_box={self.crop_box!r})")

    def _get_builder(self):
        if self._builder is None:
            import tensorflow_datasets as tfds  # Imported lazily: it is slow to import.
            try:
                self._builder = tfds.builder(self.dataset_name, data_dir=self.data_dir)
            except Exception as e:  # noqa: BLE001 - tfds raises several types for bad names.
                raise ValueError(f"tfds.name={self.dataset_name!r} is not a usable TFDS dataset: {e}") from e
        return self._builder

    def _key(self, builder) -> str:
        config = builder.builder_config.name if builder.builder_config else None
        return f"{builder.name}/{config}" if config else builder.name

    def required_files(self) -> list[str]:
        """The original download file names TFDS needs to prepare this dataset."""
        builder = self._get_builder()
        key = self._key(builder)
        if key in MANUAL_FILES:
            return list(MANUAL_FILES[key])
        infos = builder.url_infos or {}
        return sorted({info.filename or url.rsplit("/", 1)[-1] for url, info in infos.items()})

    def _how_to(self, builder) -> str:
        data_dir = self.data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        files = self.required_files()
        return (
            f"TFDS dataset {self._key(builder)!r} (version {builder.version}) is not prepared in "
            f"{data_dir}. Provide it in one of these ways:\n"
            f"  1. put the original files {files} in a folder and pass manual_dir=<folder> "
            "(prepared offline);\n"
            "  2. copy a prepared TFDS folder "
            f"({self._key(builder)}/{builder.version}/ with dataset_info.json) into data_dir;\n"
            "  3. on a machine with network access pass download=True (or run "
            f"`tfds build {self.dataset_name} --data_dir=<data_dir>`).\n"
            "For CIFAR-10 or image files without TFDS, use the 'cifar10_archive', 'npz' or "
            "'image_folder' sources."
        )

    def _probe_network(self, builder) -> None:
        wanted = set(self.required_files())
        hosts = set()
        for url, info in (builder.url_infos or {}).items():
            if (info.filename or url.rsplit("/", 1)[-1]) in wanted:
                parsed = urllib.parse.urlparse(url)
                if parsed.hostname:
                    hosts.add((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
        for host, port in sorted(hosts):
            try:
                socket.create_connection((host, port), timeout=self.probe_timeout).close()
            except OSError as e:
                raise FileNotFoundError(
                    f"download=True but {host}:{port} is unreachable ({e}).\n" + self._how_to(builder)
                ) from e

    def _prepare(self, builder) -> None:
        if builder.is_prepared():
            return
        import tensorflow_datasets as tfds
        if self.manual_dir is not None and not self.download:
            missing = [f for f in self.required_files()
                       if not os.path.exists(os.path.join(self.manual_dir, f))]
            if missing:
                raise FileNotFoundError(
                    f"tfds.manual_dir={self.manual_dir} lacks {missing}.\n" + self._how_to(builder)
                )
            config = tfds.download.DownloadConfig(manual_dir=self.manual_dir, try_download_gcs=False)
            try:
                builder.download_and_prepare(download_config=config)
            except Exception as e:
                e.add_note(
                    f"t2t_image: preparing TFDS {self._key(builder)!r} offline from manual_dir="
                    f"{self.manual_dir} failed; the files there must be the unmodified official "
                    f"downloads {self.required_files()}."
                )
                raise
            return
        if self.download:
            self._probe_network(builder)
            config = tfds.download.DownloadConfig(manual_dir=self.manual_dir)
            builder.download_and_prepare(download_config=config)
            return
        raise FileNotFoundError(self._how_to(builder))

    def load(self, split, *, shuffle, seed, with_labels):
        """See ``Source.load``; returns a TFDS stream (files shuffled when training)."""
        import tensorflow_datasets as tfds
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a TFDS split string such as 'train', got {split!r}")
        builder = self._get_builder()
        features = builder.info.features
        if self.image_key not in features:
            raise ValueError(
                f"tfds.image_key={self.image_key!r} is not a feature of {self.dataset_name} "
                f"(features: {sorted(features.keys())})"
            )
        label_names = num_classes = None
        if self.label_key in features and hasattr(features[self.label_key], "names"):
            label_names = list(features[self.label_key].names)
            num_classes = features[self.label_key].num_classes
        if with_labels and self.label_key not in features:
            raise ValueError(
                f"tfds: class-conditional task needs labels but {self.dataset_name} has no "
                f"feature {self.label_key!r} (features: {sorted(features.keys())}); set "
                "tfds.label_key or use another task"
            )
        self._prepare(builder)
        read_config = tfds.ReadConfig(shuffle_seed=seed) if shuffle else None
        ds = builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read_config)
        image_key, label_key = self.image_key, self.label_key

        def to_example(ex):
            image = ex[image_key]
            if image.shape.rank == 3 and image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            out = {"image": tf.cast(image, tf.uint8)}
            if with_labels:
                out["label"] = tf.cast(ex[label_key], tf.int32)
            return out

        ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
        try:
            num_examples = builder.info.splits[split].num_examples
        except Exception:  # noqa: BLE001 - unknown until prepared (or under mocking).
            num_examples = None
        return SplitData(
            dataset=ds, shuffled=False, crop_box=self.crop_box, num_examples=num_examples or None,
            label_names=label_names, num_classes=num_classes,
            description=f"{self.describe()} split {split!r}",
        )
