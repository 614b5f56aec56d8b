"""The READMEs cannot rot: their quick-start commands run, and the two languages say the same things.

- Every command in the ```bash blocks of the first two sections ("The two commands", "A quick tour")
  of both READMEs is run, in README order, in a scratch folder laid out like the repository's root,
  with `MNIST_NN_MAX_EPOCHS=1` (the quick-try cap the READMEs mention) and the real MNIST, offline
  (no download can succeed) after the one offline step the READMEs give at the top,
  `export MNIST_NN_DATA=DIR`, with DIR the real folder. The "From Python" example runs too. Only two
  kinds are not run, and `classify` names them: installing (venv, activate, pip: .ci/run runs the
  README's install line verbatim before the tests, so this test already runs inside its result) and
  the test suite itself (`python -m pytest`: this test is part of it; running it would recurse).
  `mnist-nn serve` runs in the background until its page and API answer.
- README.md and README_Chinese.md have the same `##` sections in the same order (matched by position),
  the same commands in them, the same numbers, the same pictures, and link to each other at the top.
- The result tables and the sample training output are current (benchmarks/render_results.py --check,
  scripts/make_doc_images.py --check), and the parameter counts in the prose are the models' own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, free_port

README = REPO / "README.md"
README_CHINESE = REPO / "README_Chinese.md"
# The quick-start sections, by position: the first two `##` sections of each README.
QUICK_START_SECTIONS = 2
ENGLISH_QUICK_START = ["The two commands", "A quick tour"]
INSTALL_PROGRAMS = {"python3": "-m venv", ".": "activate", "pip": "install"}
SKIP_INSTALL = "installs: .ci/run runs the README's install line verbatim, and this test runs inside the result"
SKIP_TESTS = "runs the test suite, which this test is part of (it would recurse)"


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every `##` section, in order; fenced code is not mistaken for headings."""
    found: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            found.append((line[3:].strip(), []))
        elif found:
            found[-1][1].append(line)
    return [(heading, "\n".join(body)) for heading, body in found]


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M)


def commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, `\\` continuations joined, `&&` chains split."""
    text = re.sub(r"\\\n", " ", block)
    result = []
    for line in text.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            result += [part.strip() for part in line.split("&&")]
    return result


def quick_start_commands(path: Path) -> list[str]:
    found = []
    for _, body in sections(path.read_text(encoding="utf-8"))[:QUICK_START_SECTIONS]:
        for block in bash_blocks(body):
            found += commands(block)
    return found


def classify(command: str) -> tuple[str, dict[str, str], list[str]]:
    """("run" | "serve" | "skip: why", environment assignments, argv)."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    program = words[0] if words else ""
    if program in INSTALL_PROGRAMS and INSTALL_PROGRAMS[program] in command:
        return f"skip: {SKIP_INSTALL}", env, words
    if words[:3] == ["python", "-m", "pytest"]:
        return f"skip: {SKIP_TESTS}", env, words
    if program == "mnist-nn":
        return ("serve" if words[1:2] == ["serve"] else "run"), env, words[1:]
    raise AssertionError(f"README quick start: no rule to run or skip {command!r}; teach tests/test_docs.py")


def mnist_nn() -> list[str]:
    """The installed console script beside this Python, as a reader runs it; else `python -m mnist_nn`."""
    script = Path(sys.executable).parent / "mnist-nn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mnist_nn"]


def offline_step(path: Path) -> list[str]:
    """The commands the README gives offline users at the top, before its first section."""
    intro = path.read_text(encoding="utf-8").split("\n## ", 1)[0]
    return [command for block in bash_blocks(intro) for command in commands(block)]


def apply_offline_step(env: dict[str, str], mnist_dir: Path) -> dict[str, str]:
    """Run the README's `export MNIST_NN_DATA=DIR` as a reader would, their own folder for DIR."""
    (command,) = offline_step(README)
    name, value = shlex.split(command)[1].split("=", 1)
    assert (name, value) == ("MNIST_NN_DATA", "DIR"), command
    return {**env, name: str(mnist_dir)}


@pytest.fixture
def sandbox(tmp_path, mnist_dir) -> tuple[Path, dict[str, str]]:
    """A folder like a user's clone (docs/ linked in, no ../shared beside it), and the env, offline.

    Offline: a download would go to a port nothing listens on, and fail at once. The data comes
    from the README's one offline step (`apply_offline_step`), not from this fixture.
    """
    root = tmp_path / "mnist-nn"
    root.mkdir()
    (root / "docs").symlink_to(REPO / "docs")
    env = {k: v for k, v in os.environ.items() if k != "MNIST_NN_DATA"}
    env.update(
        MNIST_NN_MAX_EPOCHS="1",
        MNIST_NN_CACHE=str(tmp_path / "cache"),
        MNIST_NN_MIRROR=f"http://127.0.0.1:{free_port()}/",
    )
    return root, apply_offline_step(env, Path(mnist_dir).resolve())


def run_server(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Start the server as the README says (on a free port: 8000 may be taken here), check it answers, stop it."""
    port = free_port()
    server = subprocess.Popen(
        [*mnist_nn(), *argv, "--port", str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/api/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"`mnist-nn {shlex.join(argv)}` did not serve: {server.communicate()[0][-2000:]!r}")
                time.sleep(0.5)
        with urllib.request.urlopen(base + "/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        with urllib.request.urlopen(base + "/api/model", timeout=10) as response:
            assert response.status == 200
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.realdata
def test_quick_start_commands_run(sandbox):
    root, base_env = sandbox
    english, chinese = quick_start_commands(README), quick_start_commands(README_CHINESE)
    assert english == chinese, "README.md and README_Chinese.md must show the same quick-start commands"
    # The contract with .ci/run: the install-and-train line, verbatim, comes first.
    assert english[:4] == [
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        'pip install -e ".[dev]"',
        "mnist-nn train --recipe tutorial",
    ]
    assert "python -m pytest" in english
    ran, skipped = [], []
    for command in english:
        kind, assignments, argv = classify(command)
        if kind.startswith("skip"):
            skipped.append(command)
            continue
        env = {**base_env, **assignments, "MNIST_NN_MAX_EPOCHS": "1"}
        if kind == "serve":
            run_server(argv, root, env)
        else:
            result = subprocess.run(
                [*mnist_nn(), *argv], cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False
            )
            assert result.returncode == 0, f"`{command}` failed ({result.returncode}):\n{result.stderr[-3000:]}"
            if argv[0] == "train":
                assert "test accuracy" in result.stdout and re.search(r"for 1 epoch\b", result.stdout), result.stdout
            if argv[0] == "predict":
                image = next(arg for arg in reversed(argv) if not arg.startswith("--"))
                assert Path(image).name in result.stdout, result.stdout
        ran.append(command)
    contract = {"python3 -m venv .venv", ". .venv/bin/activate", 'pip install -e ".[dev]"', "python -m pytest"}
    assert contract <= set(skipped)
    assert any(c.startswith("mnist-nn serve") for c in ran)
    assert (root / "runs" / "tutorial" / "model.pt").exists()
    assert (root / "runs" / "tutorial" / "evaluation" / "confusion.png").exists()
    assert not (root.parent / "cache").exists()  # nothing tried to download


def test_readmes_give_offline_users_one_step_at_the_top():
    assert offline_step(README) == offline_step(README_CHINESE) == ["export MNIST_NN_DATA=DIR"]


def test_user_examples_speak_of_the_users_own_folder():
    """`../shared` exists in our development checkouts only: no command or code example a user runs names it."""
    for path in (README, README_CHINESE):
        text = path.read_text(encoding="utf-8")
        examples = re.findall(r"^```(?:bash|python|text)\n(.*?)^```", text, re.S | re.M)
        assert examples and not [e for e in examples if "../shared" in e], path.name


@pytest.mark.realdata
def test_the_from_python_example_runs(sandbox):
    """README's "From Python" block, as written, with the epochs capped: it trains, then reads docs/images/digit.png."""
    root, env = sandbox
    english, chinese = (python_example(path) for path in (README, README_CHINESE))
    assert [line.split("#")[0].rstrip() for line in english.splitlines()] == [
        line.split("#")[0].rstrip() for line in chinese.splitlines()
    ]
    done = subprocess.run(
        [sys.executable, "-c", english], cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    label, probability = done.stdout.strip().splitlines()[-1].split()
    assert label in [str(d) for d in range(10)] and 0.0 < float(probability) <= 1.0


def python_example(path: Path) -> str:
    """The first ```python block of the "From Python" section (by position: the same section in both READMEs)."""
    headings = [heading for heading, _ in sections(README.read_text(encoding="utf-8"))]
    body = sections(path.read_text(encoding="utf-8"))[headings.index("From Python")][1]
    return re.findall(r"^```python\n(.*?)^```", body, re.S | re.M)[0]


def test_classify_is_explicit():
    assert classify("python3 -m venv .venv")[0] == f"skip: {SKIP_INSTALL}"
    assert classify('pip install -e ".[serve]"')[0] == f"skip: {SKIP_INSTALL}"
    assert classify("python -m pytest")[0] == f"skip: {SKIP_TESTS}"
    assert classify("MNIST_NN_MAX_EPOCHS=1 mnist-nn train") == ("run", {"MNIST_NN_MAX_EPOCHS": "1"}, ["train"])
    assert classify("mnist-nn serve m.pt")[0] == "serve"
    with pytest.raises(AssertionError, match="no rule"):
        classify("rm -rf runs")


def test_readmes_have_the_same_sections():
    english, chinese = sections(README.read_text("utf-8")), sections(README_CHINESE.read_text("utf-8"))
    assert [h for h, _ in english][:QUICK_START_SECTIONS] == ENGLISH_QUICK_START
    pairs = list(zip(english, chinese, strict=False))
    assert len(english) == len(chinese), (
        f"README.md has {len(english)} sections, README_Chinese.md {len(chinese)}; by position: "
        + "; ".join(f"{e[0]!r} = {c[0]!r}" for e, c in pairs)
    )
    for (heading, body), (heading_zh, body_zh) in pairs:
        where = f"section {heading!r} / {heading_zh!r}"
        # Sub-sections, code blocks, commands, tables and marker blocks correspond one to one.
        assert len(re.findall(r"^### ", body, re.M)) == len(re.findall(r"^### ", body_zh, re.M)), where
        assert len(re.findall(r"^```", body, re.M)) == len(re.findall(r"^```", body_zh, re.M)), where
        assert [commands(b) for b in bash_blocks(body)] == [commands(b) for b in bash_blocks(body_zh)], where
        assert re.findall(r"<!-- [a-z-]+:(?:start|end) -->", body) == re.findall(
            r"<!-- [a-z-]+:(?:start|end) -->", body_zh
        ), where
        assert body.count("\n| --- ") == body_zh.count("\n| --- "), where


NUMBER = re.compile(r"(?<![A-Za-z0-9_.])\d+(?:[.,]\d+)*%?(?!\.?[A-Za-z0-9_])")


def numbers(text: str) -> set[str]:
    """Numbers as written (97.65%, 175,306, 0.0045), outside URLs' ports and file names' digits."""
    return set(NUMBER.findall(text))


def test_readmes_have_the_same_numbers():
    english, chinese = numbers(README.read_text("utf-8")), numbers(README_CHINESE.read_text("utf-8"))
    assert {"175,306", "60,000", "0.0045", "25", "98%"} <= english
    assert english == chinese, (
        f"only in README.md: {sorted(english - chinese)}; only in README_Chinese.md: {sorted(chinese - english)}"
    )


def test_readmes_link_each_other_and_their_pictures_exist():
    english, chinese = README.read_text("utf-8"), README_CHINESE.read_text("utf-8")
    assert "(README_Chinese.md)" in "\n".join(english.splitlines()[:5])
    assert "(README.md)" in "\n".join(chinese.splitlines()[:5])
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", english)
    assert pictures and pictures == re.findall(r"!\[[^\]]*\]\(([^)]+)\)", chinese)
    for picture in pictures:
        assert picture.startswith("docs/images/") and (REPO / picture).stat().st_size > 0, picture
    for text in (english, chinese):
        assert "MNIST_NN_MAX_EPOCHS=1" in text
        for anchor in re.findall(r"\]\(#([^)]+)\)", text):
            assert anchor in {_anchor(h) for h, _ in sections(text)}, anchor


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_parameter_counts_in_the_readmes_are_the_models_own():
    from mnist_nn.models.networks import build_model, count_parameters

    for text in (README.read_text("utf-8"), README_CHINESE.read_text("utf-8")):
        for name in ("tutorial-mlp", "lenet5", "cnn-fast"):
            assert f"{count_parameters(build_model(name)):,}" in text, name


@pytest.mark.parametrize(
    "script", ["benchmarks/render_results.py", "scripts/make_doc_images.py"], ids=["result-tables", "train-output"]
)
def test_generated_readme_blocks_are_current(script):
    check = subprocess.run([sys.executable, str(REPO / script), "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
