"""The ``cifar10_archive`` source: the official ``cifar-10-python.tar.gz``, read safely.

The official python version of CIFAR-10 (Krizhevsky 2009) is a tar archive of
Python 2 pickles (``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``). Each batch is a dict with ``b'data'`` (uint8
``[10000, 3072]``: 1024 red, then 1024 green, then 1024 blue values per row, each
plane row-major 32x32) and ``b'labels'`` (10000 ints in 0..9). T2T's
``image_cifar10`` problems read the same files.

Safety (these files come from the internet):

* Members are read in memory with ``tarfile.extractfile``; nothing is written to
  disk. An archive holding a member whose path is absolute or contains ``..``,
  or a link or device member, is refused as a whole (ValueError naming the
  member) before any pickle is read.
* Pickles are never unpickled: ``load_cifar_pickle`` parses their opcodes into
  plain Python objects (``safe_pickle``), and builds a numpy array only after
  its dtype (a plain integer type), shape and byte count are checked, so a
  crafted file can neither run code, crash the process nor make it read memory
  it did not write. A global other than numpy's array reconstructors
  (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``;
  anything else outside the batch layout above raises ValueError. Errors name
  the archive and the member.
* A member larger than ``MAX_MEMBER_BYTES`` (512 MiB; an official batch is 31 MB)
  is refused before it is read.
* ``safe_extract_tar`` extracts an archive for users who want the files on disk,
  with the same member checks plus Python's ``tarfile`` ``"data"`` filter.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import tarfile

import numpy as np

from t2t_image.data import safe_pickle
from t2t_image.data import splits as splits_lib
from t2t_image.data.sources import Source, SplitData

CIFAR10_LABEL_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
_MEMBERS = TRAIN_BATCHES + (TEST_BATCH, META)
_SPLITS = {"train": TRAIN_BATCHES, "test": (TEST_BATCH,)}

# The official batches are about 31 MB; refuse members that could not be one
# before reading them (a tar header can claim any size).
MAX_MEMBER_BYTES = 512 << 20
_PLAIN = (bytes, str, int, float, bool, type(None))


def load_cifar_pickle(data: bytes, what: str = "pickle") -> dict:
    """Reads one CIFAR python file without unpickling it (``safe_pickle.read_pickle``).

    Only the structures a CIFAR batch or ``batches.meta`` holds are accepted: a
    dict with string keys whose values are plain values, lists/tuples of plain
    values, or numpy integer arrays; each array is built only after its dtype,
    shape and byte count are checked (``safe_pickle.to_array``).

    Args:
      data: the file's bytes.
      what: the file (and archive member) for error messages.

    Returns:
      The dict with keys decoded to str (``'data'``, ``'labels'``, ...); bytes
      values are left as they are.

    Raises:
      pickle.UnpicklingError: for any global outside the numpy-array allow-list
        (nothing is imported or called).
      ValueError: naming ``what`` when the file is truncated or not a CIFAR dict.
    """
    obj = safe_pickle.read_pickle(data, f"{what}: not a readable CIFAR-10 pickle")
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: expected a dict, the CIFAR-10 batch layout; got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        name = key.decode("latin1") if isinstance(key, bytes) else str(key)
        where = f"{what}: b'{name}'"
        if isinstance(value, safe_pickle.ArrayRecord):
            value = safe_pickle.to_array(value, where)
        elif isinstance(value, (list, tuple)):
            if not all(isinstance(v, _PLAIN) for v in value):
                raise ValueError(f"{where}: a list may hold only strings and numbers")
        elif not isinstance(value, _PLAIN):
            raise ValueError(f"{where}: unexpected {type(value).__name__} value")
        out[name] = value
    return out


def parse_cifar_batch(batch: dict, what: str = "batch") -> tuple[np.ndarray, np.ndarray]:
    """Converts an unpickled CIFAR-10 batch dict to images and labels.

    Args:
      batch: the dict returned by ``load_cifar_pickle``.
      what: a name for error messages.

    Returns:
      ``(images, labels)``: uint8 ``[N, 32, 32, 3]`` (RGB, HWC) and int32 ``[N]``.

    Raises:
      ValueError: when ``data`` or ``labels`` is missing or malformed.
    """
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{what}: not a CIFAR-10 batch; expected keys b'data' and b'labels', got "
            f"{sorted(map(str, batch))}"
        )
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = (f"dtype {data.dtype}, shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise ValueError(f"{what}: b'data' has {desc}; expected uint8 [N, 3072]")
    try:
        labels = np.asarray(batch["labels"])
    except Exception as e:  # pragma: no cover - defensive
        raise ValueError(f"{what}: b'labels' is not a list of ints ({e})") from e
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{what}: b'labels' has dtype {labels.dtype}, shape {labels.shape}; expected "
            f"{data.shape[0]} integers"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{what}: labels must be in 0..9, got range {labels.min()}..{labels.max()}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    name = member.name
    parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise ValueError(
            f"{archive}: refusing the archive, member {name!r} has a path outside the "
            "archive root (absolute or containing '..')"
        )
    if not (member.isfile() or member.isdir()):
        raise ValueError(
            f"{archive}: refusing the archive, member {name!r} is a link or special file; "
            "the CIFAR-10 archive holds only regular files"
        )


def safe_extract_tar(archive, target_dir) -> list[str]:
    """Extracts a tar archive into ``target_dir`` without writing outside it.

    Every member is checked first (no absolute paths, no ``..``, no links or
    devices); if any fails, nothing is extracted. Extraction then uses Python's
    ``tarfile`` ``"data"`` filter as a second line of defence.

    Args:
      archive: path of a ``.tar`` / ``.tar.gz`` file.
      target_dir: the folder to extract into (created if missing).

    Returns:
      The extracted regular files, as paths under ``target_dir``.

    Raises:
      FileNotFoundError: when ``archive`` does not exist.
      ValueError: naming the first unsafe member.
    """
    archive = os.fspath(archive)
    if not os.path.isfile(archive):
        raise FileNotFoundError(f"archive not found: {archive}")
    target = os.path.realpath(os.fspath(target_dir))
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, archive)
            dest = os.path.realpath(os.path.join(target, member.name))
            if dest != target and not dest.startswith(target + os.sep):
                raise ValueError(f"{archive}: member {member.name!r} would be written outside {target}")
        os.makedirs(target, exist_ok=True)
        tar.extractall(target, members=members, filter="data")
    return [os.path.join(target, m.name) for m in members if m.isfile()]


def read_cifar10_files(path, names=_MEMBERS) -> dict[str, bytes]:
    """Reads the raw bytes of CIFAR-10 python files from an archive or a folder.

    Args:
      path: ``cifar-10-python.tar.gz`` (any tar compression), or a folder that
        holds the files directly or in ``cifar-10-batches-py/``.
      names: the file basenames wanted.

    Returns:
      A dict from basename to bytes for the names found.

    Raises:
      FileNotFoundError: when ``path`` does not exist.
      ValueError: when the archive has an unsafe member, a name appears twice, a
        member is larger than ``MAX_MEMBER_BYTES`` or cannot be read (naming it).
    """
    return {name: data for name, (_, data) in _read_files(path, names).items()}


def _too_large(where: str, size: int) -> ValueError:
    return ValueError(f"{where}: {size} bytes is larger than any CIFAR-10 python file "
                      f"(limit MAX_MEMBER_BYTES={MAX_MEMBER_BYTES}); refused")


def _read_files(path, names) -> dict[str, tuple[str, bytes]]:
    """``read_cifar10_files`` that also says where each file came from (for messages)."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"cifar10_archive.path: {path} does not exist; download cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and pass its path (or the extracted folder)"
        )
    out: dict[str, tuple[str, bytes]] = {}
    if os.path.isdir(path):
        for folder in (path, os.path.join(path, "cifar-10-batches-py")):
            for name in names:
                file = os.path.join(folder, name)
                if name not in out and os.path.isfile(file):
                    if os.path.getsize(file) > MAX_MEMBER_BYTES:
                        raise _too_large(file, os.path.getsize(file))
                    with open(file, "rb") as f:
                        out[name] = (file, f.read())
        return out
    try:
        tar = tarfile.open(path, "r:*")
    except tarfile.TarError as e:
        raise ValueError(f"cifar10_archive.path: {path} is not a tar archive ({e})") from e
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"cifar10_archive.path: {path} is a damaged tar archive ({e})") from e
        for member in members:  # Validate every member before reading any.
            _check_member(member, path)
        found: dict[str, tarfile.TarInfo] = {}
        for member in members:
            base = posixpath.basename(member.name)
            if member.isfile() and base in names:
                if base in found:
                    raise ValueError(
                        f"{path}: {base} appears twice ({found[base].name!r}, {member.name!r})"
                    )
                found[base] = member
        for base, member in found.items():
            where = f"{path} member {member.name}"
            if member.size > MAX_MEMBER_BYTES:
                raise _too_large(where, member.size)
            try:
                out[base] = (where, tar.extractfile(member).read())
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ValueError(f"{where}: cannot be read, the archive is damaged "
                                 f"({type(e).__name__}: {e})") from e
    return out


class Cifar10ArchiveSource(Source):
    """CIFAR-10 from the official python archive (or its extracted folder).

    Splits: ``"train"`` (``data_batch_1`` .. ``data_batch_5`` in order, 50,000
    images) and ``"test"`` (``test_batch``, 10,000), with TFDS-style slicing such
    as ``"train[:90%]"`` / ``"train[90%:]"`` for a held-out validation part.
    Label names come from ``batches.meta`` (the official names if it is absent).
    Corresponds to T2T's ``image_cifar10`` data generation.

    Args:
      path: ``cifar-10-python.tar.gz`` or the folder it extracts to.
    """

    name = "cifar10_archive"

    def __init__(self, path):
        if path is None or not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"cifar10_archive.path must be a path, got {path!r}")
        self.path = os.path.expanduser(os.fspath(path))
        if not os.path.exists(self.path):
            raise FileNotFoundError(
                f"cifar10_archive.path: {self.path} does not exist; download cifar-10-python.tar.gz "
                "from https://www.cs.toronto.edu/~kriz/cifar.html and pass its path (or the "
                "extracted folder)"
            )
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._label_names: list[str] | None = None

    def describe(self) -> str:
        return f"cifar10_archive({self.path})"

    def _load_base(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._cache:
            names = _SPLITS[split]
            files = _read_files(self.path, names + (META,))
            raw = {n: data for n, (_, data) in files.items()}
            missing = [n for n in names if n not in raw]
            if missing:
                raise FileNotFoundError(
                    f"cifar10_archive: {self.path} lacks {missing} for split {split!r}"
                )
            parts = [parse_cifar_batch(load_cifar_pickle(raw[n], files[n][0]), files[n][0])
                     for n in names]
            self._cache[split] = (np.concatenate([p[0] for p in parts]),
                                  np.concatenate([p[1] for p in parts]))
            if self._label_names is None:
                self._label_names = list(CIFAR10_LABEL_NAMES)
                if META in raw:
                    meta = load_cifar_pickle(raw[META], files[META][0])
                    names_ = meta.get("label_names")
                    if isinstance(names_, list) and len(names_) == 10:
                        self._label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_]
        return self._cache[split]

    def load(self, split, *, shuffle, seed, with_labels):
        """See ``Source.load``; returns in-memory arrays."""
        del shuffle, seed, with_labels  # Arrays are shuffled by the pipeline; labels always exist.
        images, labels = [], []
        for part in splits_lib.parse_split(split):
            if part.name not in _SPLITS:
                raise ValueError(
                    f"split={split!r}: cifar10_archive has splits ['test', 'train'], got {part.name!r}"
                )
            x, y = self._load_base(part.name)
            idx = part.indices(len(x))
            images.append(x[idx.start:idx.stop])
            labels.append(y[idx.start:idx.stop])
        x = np.concatenate(images) if len(images) > 1 else images[0]
        y = np.concatenate(labels) if len(labels) > 1 else labels[0]
        return SplitData(
            images=x, labels=y, num_examples=len(x), label_names=self._label_names,
            num_classes=10, description=f"{self.describe()} split {split!r}: {len(x)} images",
        )
