from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import idx_bytes, write_idx_dataset
from mnist_nn.core.errors import UserError
from mnist_nn.data.datasets import (
    DeviceLoader,
    get_dataset_spec,
    load_dataset,
    locate,
    normalize,
    read_split,
    recorded_data_dir,
    split_indices,
)


def test_reads_gzip_and_raw_flat_folders(tmp_path):
    for gz in (True, False):
        folder = write_idx_dataset(tmp_path / f"gz{gz}", train=50, test=20, gz=gz)
        images, labels, md5 = read_split(folder, "train")
        assert images.shape == (50, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (50,) and labels.dtype == torch.int64
        raw = gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes()) if gz else None
        if raw is not None:
            assert md5["train-labels-idx1-ubyte"] == hashlib.md5(raw).hexdigest()


def test_locates_torchvision_layout(tmp_path):
    write_idx_dataset(tmp_path / "root" / "MNIST" / "raw", gz=False)
    folder, source = locate(get_dataset_spec("mnist"), tmp_path / "root")
    assert folder == tmp_path / "root" / "MNIST" / "raw" and source == "--data-dir"


def test_search_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    spec = get_dataset_spec("mnist")
    a, b, cache = (write_idx_dataset(tmp_path / n) for n in ("a", "b", "cache"))
    monkeypatch.setenv("MNIST_NN_CACHE", str(cache))
    monkeypatch.setenv("MNIST_NN_DATA", str(b))
    assert locate(spec, a) == (a, "--data-dir")
    assert locate(spec, None) == (b, "$MNIST_NN_DATA")
    monkeypatch.delenv("MNIST_NN_DATA")
    assert locate(spec, None) == (cache, "cache")
    monkeypatch.setenv("MNIST_NN_CACHE", str(tmp_path / "empty"))
    assert locate(spec, None) is None


def _run_record(run: Path, folder: Path, md5: dict[str, str], dataset: str = "toy") -> Path:
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"dataset": dataset, "folder": str(folder), "md5": md5}}))
    return run / "model.pt"


def test_recorded_data_folder_is_used_only_while_it_verifies(tmp_path, toy_dataset):
    md5 = {**read_split(toy_dataset, "train")[2], **read_split(toy_dataset, "test")[2]}
    checkpoint = _run_record(tmp_path / "run", toy_dataset, md5)
    folder, note = recorded_data_dir(checkpoint)
    assert folder == toy_dataset and note.endswith("config.json), verified")
    other = _run_record(tmp_path / "other", toy_dataset, {**md5, "t10k-labels-idx1-ubyte": "0" * 32})
    assert recorded_data_dir(other) == (
        None,
        f"the files in the run's data folder {toy_dataset} differ from those it was trained on",
    )
    (toy_dataset / "t10k-labels-idx1-ubyte.gz").unlink()
    assert recorded_data_dir(checkpoint) == (
        None,
        f"the run's data folder {toy_dataset} no longer holds the four files",
    )


def test_no_record_means_no_folder(tmp_path):
    assert recorded_data_dir(tmp_path / "model.pt") == (None, "")  # no config.json beside it
    (tmp_path / "config.json").write_text("{not json")
    assert recorded_data_dir(tmp_path / "model.pt") == (None, "")


def _corrupt(folder: Path, name: str, data: bytes) -> None:
    (folder / f"{name}.gz").unlink(missing_ok=True)
    (folder / name).write_bytes(data)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "missing train-labels-idx1-ubyte"),
        ("truncated", "truncated: header says"),
        ("truncated_gzip", "truncated gzip"),
        ("bad_gzip", "corrupt gzip"),
        ("magic", "wrong magic number 0x00000801"),
        ("count_mismatch", "holds 64 images but train-labels-idx1-ubyte holds 63 labels"),
        ("not_28x28", "images are 20x20"),
        ("label_range", "label 12 out of range"),
    ],
)
def test_each_corruption_is_a_clear_error(toy_dir, damage, message):
    labels_name, images_name = "train-labels-idx1-ubyte", "train-images-idx3-ubyte"
    good_labels = gzip.decompress((toy_dir / f"{labels_name}.gz").read_bytes())
    good_images = gzip.decompress((toy_dir / f"{images_name}.gz").read_bytes())
    if damage == "missing":
        (toy_dir / f"{labels_name}.gz").unlink()
    elif damage == "truncated":
        _corrupt(toy_dir, images_name, good_images[:-100])
    elif damage == "truncated_gzip":
        data = (toy_dir / f"{images_name}.gz").read_bytes()
        (toy_dir / f"{images_name}.gz").write_bytes(data[: len(data) // 2])
    elif damage == "bad_gzip":
        (toy_dir / f"{images_name}.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"not deflate data" * 10)
    elif damage == "magic":
        _corrupt(toy_dir, images_name, good_labels)
    elif damage == "count_mismatch":
        _corrupt(toy_dir, labels_name, idx_bytes(torch.zeros(63, dtype=torch.uint8)))
    elif damage == "not_28x28":
        _corrupt(toy_dir, images_name, idx_bytes(torch.zeros(64, 20, 20, dtype=torch.uint8)))
    elif damage == "label_range":
        _corrupt(toy_dir, labels_name, idx_bytes(torch.full((64,), 12, dtype=torch.uint8)))
    with pytest.raises(UserError) as caught:
        read_split(toy_dir, "train")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_checksum_mismatch_names_file(toy_dir):
    # Valid IDX files that are not MNIST: the content MD5 pinned for MNIST catches it.
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: checksum mismatch: MD5 of the content is"):
        load_dataset("mnist", toy_dir)


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset 'emnist'; known datasets: fashion-mnist, mnist"):
        get_dataset_spec("emnist")


def test_explicit_folder_without_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_NN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no mnist files in"):
        load_dataset("mnist", tmp_path / "empty")


def test_loader_batches_in_file_order_without_shuffle():
    images = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1)
    labels = torch.arange(10)
    loader = DeviceLoader(images, labels, batch_size=4, shuffle=False)
    batches = list(loader.epoch(1))
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    assert all(torch.equal(x.flatten().long(), y) for x, y in batches)


def test_loader_shuffle_is_a_seeded_permutation_per_epoch():
    images = torch.arange(100, dtype=torch.float32).reshape(100, 1, 1, 1)
    labels = torch.arange(100)

    def order(seed, epoch):
        loader = DeviceLoader(images, labels, batch_size=32, shuffle=True, seed=seed)
        batches = list(loader.epoch(epoch))
        assert all(torch.equal(x.flatten().long(), y) for x, y in batches)  # images stay with labels
        return torch.cat([y for _, y in batches])

    first = order(seed=1, epoch=1)
    assert sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, order(seed=1, epoch=1))
    assert not torch.equal(first, order(seed=1, epoch=2))
    assert not torch.equal(first, order(seed=2, epoch=1))
    assert not torch.equal(first, labels)


def test_loader_rejects_bad_batch_size():
    with pytest.raises(UserError, match="batch size must be a positive integer, got 0"):
        DeviceLoader(torch.zeros(4, 1, 28, 28), torch.zeros(4), batch_size=0)


def test_validation_split_is_seeded_and_disjoint():
    train, val = split_indices(1000, 100, seed=3)
    assert len(train) == 900 and len(val) == 100
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.equal(val, split_indices(1000, 100, seed=3)[1])
    assert not torch.equal(val, split_indices(1000, 100, seed=4)[1])
    train, val = split_indices(1000, 0, seed=3)
    assert torch.equal(train, torch.arange(1000)) and len(val) == 0


def test_normalize_once_to_float_on_device():
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 255
    unit = normalize(images, 0.0, 1.0, "cpu")
    assert unit.shape == (1, 1, 28, 28) and unit.dtype == torch.float32
    assert unit.min().item() == 0.0 and unit.max().item() == 1.0
    standard = normalize(images, 0.5, 0.25, "cpu")
    assert standard.min().item() == pytest.approx(-2.0) and standard.max().item() == pytest.approx(2.0)


@pytest.mark.realdata
def test_real_mnist_matches_published_facts(mnist_dir):
    splits = load_dataset("mnist", mnist_dir)
    assert splits.train_labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert splits.test_labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    pixels = splits.train_images.float() / 255
    assert pixels.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert pixels.std().item() == pytest.approx(0.3081, abs=1e-4)
