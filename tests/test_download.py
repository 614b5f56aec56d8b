"""The download path (torchvision's MNIST class) against an HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path

import pytest

from mnist_nn.cli import main
from mnist_nn.core.errors import UserError
from mnist_nn.data.datasets import load_dataset


@pytest.fixture
def serve(tmp_path):
    """Start a quiet static file server on 127.0.0.1 for a folder; yield its base URL."""
    servers = []

    def start(folder: Path) -> str:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MNIST_NN_CACHE", str(cache))
    monkeypatch.delenv("MNIST_NN_DATA", raising=False)
    return cache


@pytest.mark.realdata
def test_download_from_mirror_into_cache(mnist_dir, serve, empty_cache, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_NN_MIRROR", serve(mnist_dir))
    assert main(["data", "--download"]) == 0
    out = capsys.readouterr().out
    assert f"found in {empty_cache / 'MNIST' / 'raw'} (by downloaded)" in out
    assert "content MD5 verified" in out
    names = sorted(p.name for p in (empty_cache / "MNIST" / "raw").iterdir())
    assert names == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    assert [p.name for p in empty_cache.iterdir()] == ["MNIST"]  # no staging folder left
    # Second time: found in the cache, nothing fetched (the mirror is gone).
    monkeypatch.setenv("MNIST_NN_MIRROR", "http://127.0.0.1:9/")
    splits = load_dataset("mnist")
    assert splits.source == "cache" and len(splits.train_labels) == 60000


def test_download_of_wrong_content_is_refused_and_leaves_nothing(tmp_path, serve, empty_cache, monkeypatch):
    from conftest import write_idx_dataset

    monkeypatch.setenv("MNIST_NN_MIRROR", serve(write_idx_dataset(tmp_path / "fake")))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_dataset("mnist")
    assert not empty_cache.exists()  # nothing landed, so no empty cache folder either


def _nothing_listening() -> str:
    with socket.socket() as probe:  # a port with nothing listening: connection refused, like offline
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/"


def test_offline_error_says_how_to_point_at_files(empty_cache, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_NN_MIRROR", _nothing_listening())
    assert main(["data", "--download"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mnist-nn: error: could not download mnist from http://127.0.0.1:")
    assert "--data-dir DIR" in err and "export MNIST_NN_DATA=DIR" in err
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in err
    assert not empty_cache.exists()


def test_a_failed_download_removes_every_folder_it_created(tmp_path, monkeypatch):
    cache = tmp_path / "home" / ".cache" / "mnist-nn"
    monkeypatch.setenv("MNIST_NN_CACHE", str(cache))
    monkeypatch.delenv("MNIST_NN_DATA", raising=False)
    monkeypatch.setenv("MNIST_NN_MIRROR", _nothing_listening())
    with pytest.raises(UserError, match="could not download"):
        load_dataset("mnist")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_cache_folder_is_kept_after_a_failed_download(empty_cache, monkeypatch):
    empty_cache.mkdir()
    (empty_cache / "notes.txt").write_text("mine")
    monkeypatch.setenv("MNIST_NN_MIRROR", _nothing_listening())
    with pytest.raises(UserError, match="could not download"):
        load_dataset("mnist")
    assert [p.name for p in empty_cache.iterdir()] == ["notes.txt"]


def test_data_without_download_says_both_ways(empty_cache, capsys):
    assert main(["data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"mnist-nn: error: no mnist data found (searched the cache, {empty_cache})")
    assert "offline: put the four IDX files (train-images-idx3-ubyte[.gz]" in err
    assert "--data-dir DIR or `export MNIST_NN_DATA=DIR`" in err
    assert "online: `mnist-nn data --download` fetches it into the cache" in err
    assert not empty_cache.exists()


def test_python_callers_read_the_python_name(empty_cache):
    with pytest.raises(UserError) as caught:
        load_dataset("mnist", allow_download=False)
    assert "pass data_dir=DIR or" in str(caught.value) and "--data-dir" not in str(caught.value)
