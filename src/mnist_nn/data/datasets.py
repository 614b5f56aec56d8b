"""MNIST-style data: IDX files read and verified, found or downloaded, held on the device.

Data flows one way: files -> ``load_dataset`` -> ``Splits`` -> ``DeviceLoader``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from mnist_nn.core.errors import UserError, option
from mnist_nn.core.registry import Registry

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILE_NAMES = tuple(name for pair in SPLIT_FILES.values() for name in pair)


@dataclass(frozen=True)
class DatasetSpec:
    """One named dataset in the four-IDX-file MNIST format."""

    name: str
    title: str
    classes: tuple[str, ...]
    # Channel statistics of the training images on the [0, 1] scale (for "standard" normalization).
    mean: float
    std: float
    # The torchvision dataset class whose mirrors download it, and its folder name under ROOT.
    torchvision_class: str
    # MD5 of each uncompressed file: the content check, whatever gzip wrapper a copy arrived in.
    md5: dict[str, str] = field(default_factory=dict)
    train_size: int = 60000
    test_size: int = 10000


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.add(spec.name, spec)


register_dataset(
    DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        classes=tuple(str(d) for d in range(10)),
        mean=0.1307,
        std=0.3081,
        torchvision_class="MNIST",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    )
)
register_dataset(
    DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST clothing images",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
        torchvision_class="FashionMNIST",
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
    )
)


def get_dataset_spec(name: str) -> DatasetSpec:
    return DATASETS.lookup(name)


# --------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except EOFError:
        raise UserError(f"{path}: truncated gzip file (download or copy it again)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{path}: corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def parse_idx(raw: bytes, path: Path, expect_images: bool) -> torch.Tensor:
    """Check an IDX header against the bytes that follow it and return the uint8 payload."""
    kind = "image" if expect_images else "label"
    magic_expected = IMAGE_MAGIC if expect_images else LABEL_MAGIC
    header_size = 16 if expect_images else 8
    if len(raw) < header_size:
        raise UserError(f"{path}: too short for an IDX {kind} file ({len(raw)} bytes)")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != magic_expected:
        raise UserError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{magic_expected:08x} for an IDX {kind} file"
        )
    if expect_images:
        count, rows, cols = struct.unpack(">III", raw[4:16])
        if (rows, cols) != (28, 28):
            raise UserError(f"{path}: images are {rows}x{cols}, expected 28x28")
        shape: tuple[int, ...] = (count, rows, cols)
    else:
        (count,) = struct.unpack(">I", raw[4:8])
        shape = (count,)
    expected = header_size + count * (rows * cols if expect_images else 1)
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise UserError(f"{path}: {state}: header says {count} {kind}s ({expected} bytes), file has {len(raw)} bytes")
    # bytearray makes the tensor own writable memory (frombuffer on bytes warns and aliases).
    payload = torch.frombuffer(bytearray(raw[header_size:]), dtype=torch.uint8)
    tensor = payload.reshape(shape)
    if not expect_images and count and int(tensor.max()) > 9:
        raise UserError(f"{path}: label {int(tensor.max())} out of range 0-9")
    return tensor


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_split(
    folder: Path, split: str, md5: dict[str, str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Read and verify one split's images and labels from ``folder``; return them and their MD5s."""
    images_name, labels_name = SPLIT_FILES[split]
    tensors = []
    checksums = {}
    for name, is_images in ((images_name, True), (labels_name, False)):
        path = _find_file(folder, name)
        if path is None:
            raise UserError(f"{folder}: missing {name} (or {name}.gz)")
        raw = _read_bytes(path)
        # Structure first: "truncated" or "wrong magic" says more than a checksum mismatch would.
        tensors.append(parse_idx(raw, path, expect_images=is_images))
        digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if md5 and name in md5 and md5[name] != digest:
            raise UserError(
                f"{path}: checksum mismatch: MD5 of the content is {digest}, expected {md5[name]} "
                "(a damaged file, or a different dataset)"
            )
        checksums[name] = digest
    images, labels = tensors
    if len(images) != len(labels):
        raise UserError(
            f"{folder}: {images_name} holds {len(images)} images but {labels_name} holds {len(labels)} labels"
        )
    return images, labels.long(), checksums


# --------------------------------------------------------------------------- finding data


def cache_dir() -> Path:
    """The per-user cache: $MNIST_NN_CACHE, else $XDG_CACHE_HOME/mnist-nn, else ~/.cache/mnist-nn."""
    if os.environ.get("MNIST_NN_CACHE"):
        return Path(os.environ["MNIST_NN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-nn"


def _layouts(root: Path, spec: DatasetSpec) -> list[Path]:
    """Folders under ``root`` that may hold the files: flat, torchvision's ROOT/<Class>/raw, ROOT/<name>."""
    return [root, root / spec.torchvision_class / "raw", root / spec.name]


def _holds_any(folder: Path) -> bool:
    return any(_find_file(folder, name) for name in FILE_NAMES)


def locate(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> tuple[Path, str] | None:
    """Find the folder holding ``spec``'s files: ``data_dir``, then $MNIST_NN_DATA, then the cache.

    Returns (folder, how it was found), or None when only the cache was searched and it is empty.
    A folder named explicitly must hold the files: it is an error, not a fall-through, if not.
    """
    for root, source, named in (
        (data_dir, "--data-dir", option("data_dir")),
        (os.environ.get("MNIST_NN_DATA") or None, "$MNIST_NN_DATA", "$MNIST_NN_DATA"),
    ):
        if root is None:
            continue
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UserError(f"data folder {root} (from {named}) does not exist or is not a folder")
        for folder in _layouts(root, spec):
            if _holds_any(folder):
                return folder, source
        raise UserError(f"no {spec.name} files in {root} (from {named}): expected {_file_list()}")
    for folder in _layouts(cache_dir(), spec):
        if _holds_any(folder):
            return folder, "cache"
    return None


def _file_list() -> str:
    return ", ".join(f"{name}[.gz]" for name in FILE_NAMES)


def where_to_put_files() -> str:
    """How to give the data without a network: the four files by name, and the two ways to point at them."""
    return (
        f"put the four IDX files ({_file_list()}) in a folder DIR and pass {option('data_dir', metavar='DIR')} "
        "or `export MNIST_NN_DATA=DIR`"
    )


def not_found_message(spec: DatasetSpec) -> str:
    """No data anywhere: say both ways to get it, since a download cannot work offline. Only the cache was
    searched: a --data-dir or $MNIST_NN_DATA that was given either held the files or was an error of its own."""
    return (
        f"no {spec.name} data found (searched the cache, {cache_dir()}); offline: {where_to_put_files()}; "
        "online: `mnist-nn data --download` fetches it into the cache"
    )


def recorded_data_dir(checkpoint: str | os.PathLike) -> tuple[Path | None, str]:
    """The data folder a run was trained on (its config.json, beside ``checkpoint``), if it still verifies.

    Returns (folder, what was found): the folder when it still holds the run's four files with
    the content the run recorded (MD5 of each file, and the dataset's own pins); else None and why
    not, or None and "" when there is no record (a checkpoint outside its run directory).
    """
    import json

    config = Path(checkpoint).parent / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))["data"]
        folder, recorded_md5 = Path(data["folder"]), dict(data.get("md5") or {})
        spec = get_dataset_spec(data["dataset"])
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None, ""
    if not all(_find_file(folder, name) for name in FILE_NAMES):
        return None, f"the run's data folder {folder} no longer holds the four files"
    try:
        checksums = {}
        for split in SPLIT_FILES:
            checksums.update(read_split(folder, split, spec.md5)[2])
    except UserError as exc:
        return None, f"the run's data folder no longer verifies ({exc})"
    if recorded_md5 and checksums != recorded_md5:
        return None, f"the files in the run's data folder {folder} differ from those it was trained on"
    return folder, f"the data folder recorded by the run ({config}), verified"


def mirrors_override() -> list[str] | None:
    """$MNIST_NN_MIRROR: a comma-separated list of base URLs to download from instead of torchvision's."""
    value = os.environ.get("MNIST_NN_MIRROR", "").strip()
    if not value:
        return None
    return [m if m.endswith("/") else m + "/" for m in value.split(",") if m.strip()]


def import_torchvision_datasets() -> ModuleType:
    """torchvision.datasets; a torchvision built for another torch (it fails on import, e.g. "operator
    torchvision::nms does not exist" when pip mixed a CPU torch with a CUDA torchvision) is one line saying so."""
    try:
        import torchvision.datasets as tvd
    except (ImportError, RuntimeError) as exc:
        import importlib.metadata

        try:
            installed = f"torchvision {importlib.metadata.version('torchvision')}"
        except importlib.metadata.PackageNotFoundError:
            installed = "no torchvision"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(
            f"torchvision cannot be imported ({reason}): torch {torch.__version__} and {installed} must come from "
            "the same index; reinstall both as docs/install.md says"
        ) from None
    return tvd


def download(spec: DatasetSpec, root: Path | None = None) -> Path:
    """Download ``spec`` with torchvision's dataset class into the cache; verify before it lands.

    torchvision checks the MD5 of each .gz against its own pins. A mirror from
    $MNIST_NN_MIRROR may wrap the same content in another gzip, so there only the
    content MD5s (checked here for every download) decide.
    """
    tvd = import_torchvision_datasets()
    root = Path(root) if root is not None else cache_dir()
    base = getattr(tvd, spec.torchvision_class, None)
    if base is None:  # a dataset registered without a download source
        raise UserError(
            f"no {spec.name} data found, and torchvision has no {spec.torchvision_class} to download it: "
            f"{where_to_put_files()}"
        )
    mirrors = mirrors_override()
    attrs = {}
    if mirrors:
        attrs = {"mirrors": mirrors, "resources": [(name, None) for name, _ in base.resources]}
    dataset_class = type(base.__name__, (base,), attrs)
    # The folders this creates (the cache and any missing parent), removed again if nothing lands in them.
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    except OSError as exc:
        raise UserError(f"cannot create the data cache {root}: {exc.strerror or exc}") from None
    try:
        try:
            dataset_class(root=str(staging), train=False, download=True)
        except (RuntimeError, OSError) as exc:
            tried = ", ".join(dataset_class.mirrors)
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"could not download {spec.name} from {tried} ({first}); offline? {where_to_put_files()}"
            ) from None
        raw = staging / spec.torchvision_class / "raw"
        for gz in raw.glob("*.gz"):
            gz.unlink()
        for split in SPLIT_FILES:
            read_split(raw, split, spec.md5)
        final = root / spec.torchvision_class
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / spec.torchvision_class, final)
        return final / "raw"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()


# --------------------------------------------------------------------------- loading


@dataclass
class Splits:
    """A dataset in memory: uint8 images [N, 28, 28] and int64 labels, plus where they came from."""

    spec: DatasetSpec
    folder: Path
    source: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    checksums: dict[str, str]


def load_dataset(name: str = "mnist", data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> Splits:
    """Find (or download into the cache), read and verify a dataset by name."""
    spec = get_dataset_spec(name)
    found = locate(spec, data_dir)
    if found is None:
        if not allow_download:
            raise UserError(not_found_message(spec))
        folder, source = download(spec), "downloaded"
    else:
        folder, source = found
    train_images, train_labels, train_md5 = read_split(folder, "train", spec.md5)
    test_images, test_labels, test_md5 = read_split(folder, "test", spec.md5)
    return Splits(
        spec=spec,
        folder=folder,
        source=source,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        checksums={**train_md5, **test_md5},
    )


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded hold-out: (train indices, validation indices); order kept when val_size is 0."""
    if not 0 <= val_size < n:
        raise UserError(f"validation size must be between 0 and {n - 1}, got {val_size}")
    if val_size == 0:
        return torch.arange(n), torch.arange(0)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted so the training subset keeps file order, as no-shuffle training expects.
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def normalize(images: torch.Tensor, mean: float, std: float, device: torch.device | str) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] on ``device``: (x / 255 - mean) / std, done once."""
    x = images.to(device=device).unsqueeze(1).to(torch.float32).div_(255.0)
    if mean != 0.0 or std != 1.0:
        x.sub_(mean).div_(std)
    return x


class DeviceLoader:
    """Batches of a split that lives on the device as one tensor.

    Each epoch's order is a permutation drawn from a generator seeded with
    (seed, epoch), so any epoch can be replayed without replaying the others;
    with shuffle off, batches are views in file order, as the tutorial's DataLoader gave.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size}")
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor | None:
        """The sample order of ``epoch`` (None: file order)."""
        if not self.shuffle:
            return None
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.labels), generator=generator).to(self.labels.device)

    def epoch(self, epoch: int = 0, first_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, from ``first_batch`` (0-based) on: a resumed epoch skips those done."""
        order = self.order(epoch)
        n, size = len(self.labels), self.batch_size
        for start in range(first_batch * size, n, size):
            if order is None:
                yield self.images[start : start + size], self.labels[start : start + size]
            else:
                index = order[start : start + size]
                yield self.images.index_select(0, index), self.labels.index_select(0, index)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
