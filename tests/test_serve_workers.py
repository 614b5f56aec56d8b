"""`mnist-nn serve --workers N`: processes sharing one port, replaced when they die, gone when stopped."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")

from conftest import free_port
from mnist_nn.apps.serve.server import bind, default_workers, multiprocess_supported
from mnist_nn.cli import main
from mnist_nn.core.errors import UserError

pytestmark = pytest.mark.skipif(not multiprocess_supported(), reason="several workers need Linux")


def photo_upload() -> tuple[bytes, str]:
    """A 400x400 PNG '1' as multipart: some milliseconds of CPU each, enough to show on a worker's clock."""
    image = Image.new("L", (400, 400), 255)
    ImageDraw.Draw(image).line([(200, 60), (200, 340)], fill=0, width=30)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="one.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def predict(base: str, body: bytes, kind: str) -> int:
    """One request on a connection of its own (urllib does not keep connections alive)."""
    request = urllib.request.Request(f"{base}/api/predict", data=body, headers={"Content-Type": kind})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie no longer runs; its reaper may be slow


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def start(checkpoint: Path, workers: int) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    command = [sys.executable, "-m", "mnist_nn", "serve", str(checkpoint), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if server.poll() is not None:
            pytest.fail(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(healthy, 120, "the server to answer /api/health")
    wait_for(lambda: len(children(server.pid)) == workers, 30, f"{workers} workers")
    return server, base, port


def port_is_free(port: int) -> bool:
    """Free to listen on again, as our bind does (answered connections may linger in TIME_WAIT)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_workers_share_the_port_a_dead_one_is_replaced_and_sigterm_stops_them_all(random_checkpoint):
    server, base, port = start(random_checkpoint, workers=2)
    try:
        workers = children(server.pid)
        before = {pid: cpu_ticks(pid) for pid in workers}
        body, kind = photo_upload()
        # 40 connections: the kernel spreads them over both sockets (all on one: odds of 2 in 10^12).
        assert [predict(base, body, kind) for _ in range(40)] == [200] * 40
        assert all(cpu_ticks(pid) - before[pid] >= 3 for pid in workers), "a worker answered nothing"

        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: len(children(server.pid)) == 2 and workers[0] not in children(server.pid), 30, "a new worker")
        assert [predict(base, body, kind) for _ in range(20)] == [200] * 20  # none lands on a dead socket

        workers = children(server.pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert all(gone(pid) for pid in workers)
        assert port_is_free(port)
        stderr = server.stderr.read()
        assert "2 worker processes" in stderr and "ended (signal 9); starting a new one" in stderr
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_workers_leave_when_their_supervisor_is_killed(random_checkpoint):
    server, _base, port = start(random_checkpoint, workers=2)
    workers = children(server.pid)
    server.kill()
    server.wait()
    wait_for(lambda: all(gone(pid) for pid in workers), 20, "the orphaned workers to leave")
    wait_for(lambda: port_is_free(port), 10, "the port to be free")


def test_copies_share_one_port_but_a_held_port_is_refused():
    sockets = bind("127.0.0.1", 0, copies=3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(sockets) == 3 and len(ports) == 1
        # Another server of ours (SO_REUSEPORT too) must not join the group and take half the traffic.
        with pytest.raises(UserError, match=f"port {ports.pop()} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", sockets[0].getsockname()[1], copies=2)
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers must be a positive integer, got 0"),
        (["--workers", "2", "--device", "cuda"], "--workers above 1 works with --device cpu only"),
    ],
)
def test_bad_worker_counts_are_one_line_exit_2(random_checkpoint, capsys, argv, message):
    assert main(["serve", str(random_checkpoint), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_default_workers_follow_the_cpus_and_stay_1_off_the_cpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert default_workers() == 4 and default_workers("cuda") == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert default_workers() == 2


def test_device_auto_without_a_gpu_serves_on_several_workers(random_checkpoint, monkeypatch):
    import torch

    from mnist_nn.apps.serve import server as server_module

    started = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "set_num_threads", lambda _n: None)  # this test process keeps its threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(server_module.Supervisor, "run", lambda self: started.append(len(self.sockets)))
    monkeypatch.setattr(server_module, "_serve", lambda app, sock: started.append(1))
    server_module.run(random_checkpoint, port=free_port(), device="auto")
    assert started == [2]


def test_warm_up_answers_each_kind_and_loads_the_format_plugins(random_checkpoint):
    """Run in a fresh interpreter: this one has long since loaded Pillow's plug-ins."""
    code = (
        "import sys; from mnist_nn.inference.predictor import Predictor; from mnist_nn.apps.serve.app import warm_up; "
        "before = 'PIL.TiffImagePlugin' in sys.modules; "
        f"statuses = warm_up(Predictor.from_checkpoint({str(random_checkpoint)!r})); "
        "print(before, 'PIL.TiffImagePlugin' in sys.modules, statuses)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split(" ", 2)[:2] == ["False", "True"]
    assert done.stdout.strip().endswith("['ok', 'ok', 422]"), done.stdout
