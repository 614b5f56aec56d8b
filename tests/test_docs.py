"""The documentation cannot rot: the READMEs' and the site's commands run, and the two languages say the same.

- Every command in the ```bash blocks of both READMEs is run, in README order, in a scratch folder laid out
  like a user's clone (docs/, examples/, notebooks/ linked in), with `MNIST_NN_MAX_EPOCHS=1` (the quick-try cap
  the READMEs mention) and the real MNIST, offline (no download can succeed) after the one offline step the
  READMEs give at the top, `export MNIST_NN_DATA=DIR`, with DIR the real folder.
- Every page of the site (docs/**/*.md; the Chinese twin shows the same commands, so the English one runs)
  has its ```bash commands run the same way, in page order, in a fresh scratch folder per page; a ```python
  block that starts with `import mnist_nn` runs too, in its place. A page may name what its commands assume
  (runs a reader made on an earlier page) in a comment a reader never sees:
  `<!-- docs-test setup: mnist-nn train --recipe tutorial --out runs/tutorial -->`; such set-up trainings run
  once per session and are copied into each page that names them.
- `classify` holds the rules, one per kind of command, and refuses a command no rule covers. `mnist-nn serve`,
  `mnist-nn watch` and `mnist-nn train --watch` run in the background on a free port until the page ends,
  once they answer; a later `curl` to the port the page names reaches them. What is not run, each rule
  says why: installing (venv, activate, pip, apt-get: .ci/run runs the README's install line verbatim before
  the tests, so this test already runs inside its result), the test suite itself (it would recurse), the
  site (`mkdocs`: built by test_the_site_builds), measurements and regenerations (`python benchmarks/...`,
  `python scripts/...`), multi-process training (`torchrun`), a notebook server (`jupyter`), Fashion-MNIST
  (offline here) and `--device cuda` without a CUDA GPU. Placeholders such as `runs/<run>` belong in ```text
  blocks, which are shown and not run.
- README.md and README_Chinese.md have the same `##` sections in the same order (matched by position), the
  same commands in them, the same numbers, the same pictures, link to each other at the top, and stay under
  250 lines each; every page and its `.zh.md` twin show the same commands, pictures, generated blocks and code.
- The generated blocks are current (benchmarks/render_results.py --check, scripts/make_doc_images.py --check),
  each lives on a page, and the parameter counts in the prose are the models' own.
- The site builds with `mkdocs build --strict`, every page is in the navigation, and English and Chinese
  have as many pages as each other.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port

README = REPO / "README.md"
README_CHINESE = REPO / "README_Chinese.md"
DOCS = REPO / "docs"
MKDOCS_YML = REPO / "mkdocs.yml"
MAX_README_LINES = 250
# What a user's clone has beside the package, linked into the scratch folder (the commands read from them).
CLONE_FOLDERS = ("docs", "examples", "notebooks")
SETUP = re.compile(r"^<!-- docs-test setup: (.+?) -->$", re.M)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Background commands: the flag that sets their port, and the port the docs name when they leave it out.
PORT_FLAGS = {"serve": ("--port", 8000), "watch": ("--port", 8001), "train": ("--watch-port", 8001)}
SERVER_START_SECONDS = 120

INSTALL_PROGRAMS = {"python3": "-m venv", ".": "activate", "pip": "install", "apt-get": "install"}
SKIP_INSTALL = "installs: .ci/run runs the README's install line verbatim, and this test runs inside the result"
SKIP_TESTS = "runs the test suite, which this test is part of (it would recurse)"
SKIP_SITE = "builds or serves this site: test_the_site_builds builds it, strict, into a scratch folder"
SKIP_TORCHRUN = (
    "multi-process training for minutes on the cores the other tests share: tests/test_distributed.py runs "
    "torchrun with 2 processes on small data"
)
SKIP_MEASURE = (
    "measures (minutes to hours) or regenerates the docs' pictures and tables: tests/test_benchmarks.py runs "
    "each benchmark at its smallest settings, and test_generated_blocks_are_current checks the tables"
)
SKIP_NOTEBOOK = "starts an interactive notebook server: tests/test_notebook.py executes the notebook"
# Debian's dataset-fashion-mnist package puts the files here; .ci/run installs it, so CI runs these commands.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SKIP_FASHION = f"needs Fashion-MNIST in {FASHION_DIR} (apt-get install dataset-fashion-mnist); this test runs offline"
SKIP_CUDA = "needs a CUDA GPU, which this machine lacks"
SKIP_CURL = "needs curl, which is not installed here"


# --------------------------------------------------------------------------- reading Markdown


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


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.S | re.M)


def pictures(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)", markdown)


def markers(markdown: str) -> list[str]:
    return re.findall(r"<!-- [a-z-]+:(?:start|end) -->", markdown)


def commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, `\\` continuations joined, `&&` chains split."""
    text = re.sub(r"\\\n", " ", block)
    result = []
    for line in text.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            result += [part.strip() for part in line.split("&&")]
    return result


def readme_commands(path: Path) -> list[str]:
    """Every command of every `##` section's ```bash blocks (the offline step above them is the fixture's)."""
    return [c for _, body in sections(path.read_text(encoding="utf-8")) for b in bash_blocks(body) for c in commands(b)]


def page_steps(path: Path) -> list[tuple[str, str]]:
    """A page's runnable steps in page order: ("bash", command) and ("python", a block starting `import mnist_nn`)."""
    steps = []
    for match in re.finditer(r"^```(bash|python)\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M):
        language, code = match.groups()
        if language == "bash":
            steps += [("bash", command) for command in commands(code)]
        elif code.startswith("import mnist_nn"):
            steps.append(("python", code))
    return steps


def page_setup(path: Path) -> list[str]:
    return SETUP.findall(path.read_text(encoding="utf-8"))


def without_comments(code: str) -> list[str]:
    return [line.split("#")[0].rstrip() for line in code.splitlines()]


def english_pages() -> list[Path]:
    return sorted(page for page in DOCS.rglob("*.md") if not page.name.endswith(".zh.md"))


def twin(page: Path) -> Path:
    return page.with_name(page.name[: -len(".md")] + ".zh.md")


def page_id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


# --------------------------------------------------------------------------- the rules


def classify(command: str) -> tuple[str, dict[str, str], list[str]]:
    """("run" | "background" | "python" | "curl" | "export" | "skip: why", environment assignments, argv)."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    program = words[0] if words else ""
    rules = [
        (program in INSTALL_PROGRAMS and INSTALL_PROGRAMS[program] in command, SKIP_INSTALL),
        (words[:3] == ["python", "-m", "pytest"] or program == "pytest", SKIP_TESTS),
        (program == "mkdocs", SKIP_SITE),
        (program == "torchrun", SKIP_TORCHRUN),
        (program == "python" and words[1:2] and words[1].startswith(("benchmarks/", "scripts/")), SKIP_MEASURE),
        (program == "jupyter", SKIP_NOTEBOOK),
        ("fashion" in command and not FASHION_DIR.is_dir(), SKIP_FASHION),
        (_wants_cuda(words) and not _has_cuda(), SKIP_CUDA),
        (program == "curl" and shutil.which("curl") is None, SKIP_CURL),
    ]
    for applies, why in rules:
        if applies:
            return f"skip: {why}", env, words
    if program == "mnist-nn":
        background = words[1:2] in (["serve"], ["watch"]) or (words[1:2] == ["train"] and "--watch" in words)
        return ("background" if background else "run"), env, words[1:]
    if program == "export" and len(words) == 2 and "=" in words[1]:
        return "export", env, words[1:]
    if program == "curl":
        return "curl", env, words
    if program == "python" and _runs_our_python(words):
        return "python", env, words
    raise AssertionError(f"docs: no rule to run or skip {command!r}; teach tests/test_docs.py (classify)")


def _runs_our_python(words: list[str]) -> bool:
    """`python -m mnist_nn ...`, one of the examples a page walks through (`python examples/NAME.py`), or a
    one-line check (`python -c "import torch, torchvision; ..."`)."""
    return (
        words[1:3] == ["-m", "mnist_nn"]
        or (len(words) > 1 and words[1].startswith("examples/"))
        or (len(words) == 3 and words[1] == "-c")
    )


def _wants_cuda(words: list[str]) -> bool:
    return any(pair == ("--device", "cuda") for pair in itertools.pairwise(words)) or "--device=cuda" in words


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def mnist_nn() -> list[str]:
    """The installed console script beside this Python, as a reader runs it; else `python -m mnist_nn`."""
    script = Path(sys.executable).parent / "mnist-nn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mnist_nn"]


# --------------------------------------------------------------------------- a reader's terminal


class Terminal:
    """A reader's terminal in the scratch folder: commands in order, servers in the background until the end."""

    def __init__(self, root: Path, env: dict[str, str], setup_cache: dict | None = None) -> None:
        self.root = root
        self.env = dict(env)
        self.setup_cache = setup_cache
        self.ports: dict[int, int] = {}  # the port the docs name -> the free port it really got
        self.servers: list[tuple[str, subprocess.Popen]] = []
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc) -> None:
        for _, server in self.servers:
            server.terminate()
        for _, server in self.servers:
            try:
                server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()

    def data_dir(self) -> str:
        return self.env["MNIST_NN_DATA"]

    def bash(self, command: str, setup: bool = False) -> None:
        kind, assignments, argv = classify(command)
        if kind.startswith("skip"):
            self.skipped.append(command)
            return
        if re.search(r"<[^>\s]+>", command):
            raise AssertionError(f"{command!r} names a placeholder: show it in a ```text block, not a ```bash one")
        # `DIR` is the reader's own data folder, as in the one offline step, `export MNIST_NN_DATA=DIR`.
        argv = [self.data_dir() if arg == "DIR" else arg for arg in argv]
        env = {**self.env, **assignments, "MNIST_NN_MAX_EPOCHS": "1"}
        if kind == "export":
            name, value = argv[0].split("=", 1)
            self.env[name] = self.data_dir() if value == "DIR" else value
        elif kind == "background":
            self.start_server(command, argv, env)
        elif kind == "curl":
            self.curl(command, argv, env)
        elif kind == "python":
            self.check(command, [sys.executable, *argv[1:]], env)
        elif setup and self.cached_setup(command, argv, env):
            pass
        else:
            self.check(command, [*mnist_nn(), *argv], env)
            self.check_output(command, argv)
        self.ran.append(command)

    def python(self, code: str) -> None:
        env = {**self.env, "MNIST_NN_MAX_EPOCHS": "1"}
        self.check(code.splitlines()[0] + " ...", [sys.executable, "-c", code], env)
        self.ran.append(code)

    def check(self, command: str, argv: list[str], env: dict[str, str]) -> None:
        done = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=900, check=False)
        self.output = done.stdout
        assert done.returncode == 0, (
            f"`{command}` failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )

    def check_output(self, command: str, argv: list[str]) -> None:
        """What a reader is told to expect: a train run's result after one epoch; predict naming its image."""
        if argv[0] == "train" and "--resume" not in argv:
            assert "test accuracy" in self.output, f"`{command}`:\n{self.output[-2000:]}"
            if "--quiet" not in argv:
                assert re.search(r"for 1 epoch\b", self.output), f"`{command}`:\n{self.output[-2000:]}"
        if argv[0] == "predict":
            images = [arg for arg in argv[1:] if Path(arg).suffix.lower() in IMAGE_SUFFIXES]
            assert not images or Path(images[-1]).name in self.output, f"`{command}`:\n{self.output[-2000:]}"

    def cached_setup(self, command: str, argv: list[str], env: dict[str, str]) -> bool:
        """A set-up training (`train ... --out DIR`, not resumed) is run once per session, then copied."""
        if self.setup_cache is None or argv[0] != "train" or "--out" not in argv or "--resume" in argv:
            return False
        out = argv[argv.index("--out") + 1]
        cached = self.setup_cache["folder"] / str(len(self.setup_cache["runs"]))
        if command not in self.setup_cache["runs"]:
            self.check(command, [*mnist_nn(), *argv], env)
            shutil.copytree(self.root / out, cached)
            self.setup_cache["runs"][command] = cached
        shutil.copytree(self.setup_cache["runs"][command], self.root / out, dirs_exist_ok=True)
        return True

    def start_server(self, command: str, argv: list[str], env: dict[str, str]) -> None:
        """Start it on a free port (the one the docs name may be taken here) and wait until it answers."""
        flag, documented = PORT_FLAGS[argv[0]]
        port = free_port()
        if flag in argv:
            at = argv.index(flag) + 1
            documented, argv = int(argv[at]), [*argv[:at], str(port), *argv[at + 1 :]]
        else:
            argv = [*argv, flag, str(port)]
        self.ports[documented] = port
        server = subprocess.Popen(
            [*mnist_nn(), *argv], cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.servers.append((command, server))
        base = f"http://127.0.0.1:{port}"
        ready = "/api/health" if argv[0] == "serve" else "/"
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not _answers(base + ready):
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"`{command}` did not serve: {server.communicate()[0][-2000:]!r}")
            time.sleep(0.5)
        with urllib.request.urlopen(base + "/", timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read().lower(), command
        check = "/api/model" if argv[0] == "serve" else "/api/runs"
        with urllib.request.urlopen(base + check, timeout=30) as response:
            assert response.status == 200, command

    def curl(self, command: str, argv: list[str], env: dict[str, str]) -> None:
        """To the server the page started: the port it names becomes the port that server really got."""

        def real_port(match: re.Match) -> str:
            documented = int(match.group(2))
            assert documented in self.ports, f"`{command}`: nothing on this page serves port {documented}"
            return f"{match.group(1)}:{self.ports[documented]}"

        argv = [re.sub(r"(127\.0\.0\.1|localhost):(\d+)", real_port, arg) for arg in argv]
        self.check(command, [*argv, "--fail", "--silent", "--show-error"], env)
        assert self.output.strip(), f"`{command}` answered nothing"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------- the scratch folder


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
    """A folder like a user's clone (docs/, examples/, notebooks/ linked in; no ../shared beside it), the env, offline.

    Offline: a download would go to a port nothing listens on, and fail at once. The data comes
    from the README's one offline step (`apply_offline_step`), not from this fixture.
    """
    root = tmp_path / "mnist-nn"
    root.mkdir()
    for folder in CLONE_FOLDERS:
        if (REPO / folder).is_dir():
            (root / folder).symlink_to(REPO / folder)
    env = {k: v for k, v in os.environ.items() if k != "MNIST_NN_DATA"}
    env.update(
        MNIST_NN_MAX_EPOCHS="1",
        MNIST_NN_CACHE=str(tmp_path / "cache"),
        MNIST_NN_MIRROR=f"http://127.0.0.1:{free_port()}/",
    )
    return root, apply_offline_step(env, Path(mnist_dir).resolve())


@pytest.fixture(scope="session")
def setup_cache(tmp_path_factory) -> dict:
    return {"folder": tmp_path_factory.mktemp("docs-setup"), "runs": {}}


# --------------------------------------------------------------------------- the READMEs' commands run


@pytest.mark.realdata
def test_readme_commands_run(sandbox):
    root, env = sandbox
    english, chinese = readme_commands(README), readme_commands(README_CHINESE)
    assert english == chinese, "README.md and README_Chinese.md must show the same commands"
    # The contract with .ci/run: the install-and-train line, verbatim, comes first.
    assert english[:4] == [
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        'pip install -e ".[dev]"',
        "mnist-nn train --recipe tutorial",
    ]
    assert "python -m pytest" in english
    with Terminal(root, env) as terminal:
        for command in english:
            terminal.bash(command)
    contract = {"python3 -m venv .venv", ". .venv/bin/activate", 'pip install -e ".[dev]"', "python -m pytest"}
    assert contract <= set(terminal.skipped)
    assert any(c.startswith("mnist-nn serve") for c in terminal.ran)
    assert any(c.startswith("mnist-nn predict docs/images/digit.png") for c in terminal.ran)
    assert (root / "runs" / "tutorial" / "model.pt").exists()
    assert (root / "runs" / "tutorial" / "evaluation" / "confusion.png").exists()
    # Nothing tried to download: the cache holds at most the server's ONNX export of the model it served.
    cache = root.parent / "cache"
    assert not cache.exists() or [path.name for path in cache.iterdir()] == ["onnx"]


def test_readmes_give_offline_users_one_step_at_the_top():
    assert offline_step(README) == offline_step(README_CHINESE) == ["export MNIST_NN_DATA=DIR"]


def test_classify_is_explicit():
    assert classify("python3 -m venv .venv")[0] == f"skip: {SKIP_INSTALL}"
    assert classify('pip install -e ".[serve]"')[0] == f"skip: {SKIP_INSTALL}"
    assert classify("apt-get install chromium")[0] == f"skip: {SKIP_INSTALL}"
    assert classify("python -m pytest")[0] == f"skip: {SKIP_TESTS}"
    assert classify("mkdocs serve")[0] == f"skip: {SKIP_SITE}"
    assert classify("torchrun --nproc-per-node 2 -m mnist_nn train")[0] == f"skip: {SKIP_TORCHRUN}"
    assert classify("python benchmarks/ddp.py")[0] == f"skip: {SKIP_MEASURE}"
    fashion = classify("mnist-nn train --dataset fashion-mnist")[0]
    assert fashion == ("run" if FASHION_DIR.is_dir() else f"skip: {SKIP_FASHION}")
    assert classify("MNIST_NN_MAX_EPOCHS=1 mnist-nn train") == ("run", {"MNIST_NN_MAX_EPOCHS": "1"}, ["train"])
    assert classify("mnist-nn serve m.pt")[0] == "background"
    assert classify("mnist-nn watch runs/a")[0] == "background"
    assert classify("mnist-nn train --recipe tutorial --watch")[0] == "background"
    assert classify("export MNIST_NN_DATA=DIR") == ("export", {}, ["MNIST_NN_DATA=DIR"])
    assert classify("python examples/my_model.py --epochs 1")[0] == "python"
    assert classify('python -c "import torchvision"')[0] == "python"
    expected = f"skip: {SKIP_CUDA}" if not _has_cuda() else "run"
    assert classify("mnist-nn train --device cuda")[0] == expected
    with pytest.raises(AssertionError, match="no rule"):
        classify("rm -rf runs")


# --------------------------------------------------------------------------- the site's pages' commands run


def pages_with_steps() -> list[Path]:
    return [page for page in english_pages() if page_steps(page)]


@pytest.mark.realdata
@pytest.mark.parametrize("page", pages_with_steps(), ids=page_id)
def test_page_commands_run(page, sandbox, setup_cache):
    """The page's commands in order, in a fresh scratch folder: what a reader who starts on this page runs."""
    root, env = sandbox
    with Terminal(root, env, setup_cache) as terminal:
        for command in page_setup(page):
            terminal.bash(command, setup=True)
        for language, step in page_steps(page):
            if language == "bash":
                terminal.bash(step)
            else:
                terminal.python(step)
    assert terminal.ran or terminal.skipped


def test_user_examples_speak_of_the_users_own_folder():
    """`../shared` exists in our development checkouts only: no command or code example a user runs names it."""
    for path in (README, README_CHINESE, *DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        examples = re.findall(r"^```(?:bash|python|text)\n(.*?)^```", text, re.S | re.M)
        assert not [e for e in examples if "../shared" in e], path.name


# --------------------------------------------------------------------------- the two languages say the same


def test_readmes_are_short():
    for path in (README, README_CHINESE):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= MAX_README_LINES, f"{path.name}: {lines} lines; the details belong on the site (docs/)"


def test_readmes_have_the_same_sections():
    english, chinese = sections(README.read_text("utf-8")), sections(README_CHINESE.read_text("utf-8"))
    assert english[0][0] == "The two commands"
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
        assert markers(body) == markers(body_zh), where
        assert body.count("\n| --- ") == body_zh.count("\n| --- "), where
        assert pictures(body) == pictures(body_zh), where


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


def test_readmes_link_each_other_their_pages_and_pictures():
    english, chinese = README.read_text("utf-8"), README_CHINESE.read_text("utf-8")
    assert "(README_Chinese.md)" in "\n".join(english.splitlines()[:5])
    assert "(README.md)" in "\n".join(chinese.splitlines()[:5])
    assert pictures(english) and pictures(english) == pictures(chinese)
    for picture in pictures(english):
        assert picture.startswith("docs/images/") and (REPO / picture).stat().st_size > 0, picture
    for text in (english, chinese):
        assert "MNIST_NN_MAX_EPOCHS=1" in text
        for anchor in re.findall(r"\]\(#([^)]+)\)", text):
            assert anchor in {_anchor(h) for h, _ in sections(text)}, anchor
        # Links into the site by their docs/ paths, so that GitHub's readers can follow them.
        links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)#\s]+)", text)
        assert any(link.startswith("docs/") for link in links)
        for link in links:
            assert link.startswith("http") or (REPO / link).is_file(), link
    # The Chinese README leads to the Chinese pages.
    site_links = re.findall(r"\]\((docs/[^)#\s]+\.md)", chinese)
    assert site_links and all(link.endswith(".zh.md") for link in site_links), site_links


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("page", english_pages(), ids=page_id)
def test_each_page_and_its_chinese_twin_show_the_same(page):
    chinese = twin(page)
    assert chinese.is_file(), f"docs/{page_id(page)} has no Chinese twin docs/{page_id(chinese)}"
    english_text, chinese_text = page.read_text("utf-8"), chinese.read_text("utf-8")
    assert [commands(b) for b in bash_blocks(english_text)] == [commands(b) for b in bash_blocks(chinese_text)]
    assert pictures(english_text) == pictures(chinese_text)
    assert markers(english_text) == markers(chinese_text)
    assert page_setup(page) == page_setup(chinese)
    english_code, chinese_code = python_blocks(english_text), python_blocks(chinese_text)
    assert [without_comments(b) for b in english_code] == [without_comments(b) for b in chinese_code]


def test_every_chinese_page_has_an_english_one():
    for page in DOCS.rglob("*.zh.md"):
        assert page.with_name(page.name[: -len(".zh.md")] + ".md").is_file(), page


def test_parameter_counts_in_the_docs_are_the_models_own():
    from mnist_nn.models.networks import build_model, count_parameters

    def count(name: str) -> str:
        return f"{count_parameters(build_model(name)):,}"

    for path in (README, README_CHINESE):
        assert count("tutorial-mlp") in path.read_text("utf-8"), path.name
    for path in (DOCS / "results.md", DOCS / "results.zh.md"):
        for name in ("tutorial-mlp", "lenet5", "cnn-fast", "cnn-best"):
            assert count(name) in path.read_text("utf-8"), (path.name, name)


# --------------------------------------------------------------------------- generated blocks


@pytest.mark.parametrize(
    "script", ["benchmarks/render_results.py", "scripts/make_doc_images.py"], ids=["result-tables", "train-output"]
)
def test_generated_blocks_are_current(script):
    check = subprocess.run([sys.executable, str(REPO / script), "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_generated_block_has_a_page():
    """Each table the renderer makes, and the sample training output, is shown on the site (in both languages)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import render_results
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    shown = {m for page in DOCS.rglob("*.md") for m in markers(page.read_text("utf-8"))}
    benchmarks_only = {"profile-results"}  # where the training time goes: benchmarks/README.md
    for name in [*(set(render_results.TABLES) - benchmarks_only), "train-output"]:
        assert f"<!-- {name}:start -->" in shown, name


# --------------------------------------------------------------------------- the site


class _Loader(yaml.SafeLoader):
    """mkdocs.yml may hold tags such as !!python/name: (extensions' options); the navigation needs none."""


_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def nav_pages() -> list[str]:
    config = yaml.load(MKDOCS_YML.read_text(encoding="utf-8"), Loader=_Loader)

    def walk(item) -> Iterator[str]:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for value in item.values():
                yield from walk(value)
        elif isinstance(item, list):
            for value in item:
                yield from walk(value)

    return [page for page in walk(config["nav"]) if page.endswith(".md")]


def test_every_page_is_in_the_navigation():
    in_nav = nav_pages()
    assert len(in_nav) == len(set(in_nav)), "a page appears twice in mkdocs.yml's nav"
    on_disk = {page_id(page) for page in english_pages()}
    assert sorted(on_disk - set(in_nav)) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(in_nav) - on_disk) == [], "mkdocs.yml's nav names pages that do not exist"


def test_the_site_builds(tmp_path):
    """`mkdocs build --strict` (a broken link, a missing page or picture fails it), every page in the navigation,
    and as many Chinese pages as English ones."""
    site = tmp_path / "site"
    build = ["build", "--strict", "--config-file", str(MKDOCS_YML), "--site-dir", str(site)]
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", *build],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    # mkdocs reports pages outside the navigation at INFO level, which --strict lets pass.
    outside = re.findall(r'not included in the "nav" configuration:\n((?:\s+- .+\n?)+)', output)
    assert not outside, outside
    english = [p for p in site.rglob("index.html") if p.relative_to(site).parts[0] != "zh"]
    chinese = list((site / "zh").rglob("index.html"))
    assert len(english) == len(chinese) == len(nav_pages()), (len(english), len(chinese))
