"""The "write your own model" example trains, its page quotes it as it is, and the command pages are current.

- examples/my_model.py runs as docs/write-your-own-model.md says, for one epoch on the real MNIST, and
  reaches at least 90% (its registration lives in its own process: `mnist-nn models` cannot list it).
- Every ```python block of that page, in both languages, is a verbatim part of the file.
- docs/commands/ is what scripts/make_command_docs.py writes from the CLI's own help (`--check`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

EXAMPLE = REPO / "examples" / "my_model.py"
PAGES = (REPO / "docs" / "write-your-own-model.md", REPO / "docs" / "write-your-own-model.zh.md")
RESULT = re.compile(r"^my-cnn \(([\d,]+) parameters\): test accuracy ([\d.]+)%", re.M)


@pytest.mark.realdata
def test_own_model_example_reaches_90_percent_in_one_epoch(mnist_dir, tmp_path):
    out = tmp_path / "my-cnn"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--data-dir", str(mnist_dir), "--epochs", "1", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = RESULT.search(done.stdout)
    assert found, done.stdout
    parameters, accuracy = int(found.group(1).replace(",", "")), float(found.group(2))
    assert accuracy >= 90.0, done.stdout
    assert parameters == 20_538  # the number the page gives
    assert re.search(r"^digit\.png reads as \d \(probability [\d.]+\)$", done.stdout, re.M), done.stdout
    assert (out / "model.pt").exists() and (out / "summary.json").exists()


def test_the_page_quotes_the_example_as_it_is():
    source = EXAMPLE.read_text(encoding="utf-8")
    blocks = [re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M) for page in PAGES]
    assert blocks[0] and blocks[0] == blocks[1], "the English and Chinese pages quote the same code"
    for block in blocks[0]:
        assert block in source, f"docs/write-your-own-model.md quotes code that examples/my_model.py lacks:\n{block}"
    for page in PAGES:
        (command,) = re.findall(r"^python examples/my_model\.py .*$", page.read_text(encoding="utf-8"), re.M)
        # The page's command reads the data as every command does ($MNIST_NN_DATA, then the cache).
        assert {"--epochs", "--out"} <= set(command.split()), command
    assert '"--data-dir"' in source, "the example takes --data-dir, as the commands do"


def test_command_pages_are_current():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_command_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"regenerate with: python scripts/make_command_docs.py\n{done.stderr}"


def test_every_command_has_a_page_in_both_languages():
    from mnist_nn.cli import COMMANDS

    folder = Path(REPO / "docs" / "commands")
    for command in COMMANDS:
        for suffix in (".md", ".zh.md"):
            page = folder / f"{command.name}{suffix}"
            assert page.exists(), page
            assert f"mnist-nn {command.name} --help" in page.read_text(encoding="utf-8"), page
