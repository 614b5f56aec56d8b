"""notebooks/tutorial.ipynb: made by notebooks/make_notebook.py, stored without outputs, runs top to bottom."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "tutorial.ipynb"
GENERATOR = REPO / "notebooks" / "make_notebook.py"


def test_notebook_matches_its_generator_and_has_no_outputs():
    nbformat = pytest.importorskip("nbformat")
    check = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.realdata
def test_notebook_runs_top_to_bottom(mnist_dir, tmp_path, monkeypatch):
    """Every cell runs without an error, with one epoch per recipe, in the notebooks/ folder of a scratch clone.

    Its runs land in the clone's runs/, where the README's quick tour puts them, not in notebooks/runs/.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: the real data, one epoch, no window for plots.
    monkeypatch.setenv("MNIST_NN_DATA", str(mnist_dir))
    monkeypatch.setenv("MNIST_NN_MAX_EPOCHS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    clone = tmp_path / "clone"
    (clone / "notebooks").mkdir(parents=True)
    (clone / "pyproject.toml").write_text('[project]\nname = "mnist-nn"\n')
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(clone / "notebooks")}}
    )
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    print(f"notebook ran in {seconds:.1f} s")

    outputs = {
        index: "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "epoch cap (MNIST_NN_MAX_EPOCHS): 1" in text
    assert "train: (60000, 28, 28) torch.uint8" in text
    assert "175,306 parameters" in text
    # The tutorial MLP after one epoch and the CNN after one: both really learned.
    accuracies = [float(line.split()[2].rstrip("%")) for line in text.splitlines() if line.startswith("test accuracy")]
    assert accuracies and accuracies[0] > 85
    cnn_line = next(line for line in text.splitlines() if line.startswith("cnn-fast:"))
    assert float(cnn_line.split()[1].rstrip("%")) > 95
    # mnist_nn.predict on a scan-like PNG of test digit 0 (a 7) and on 8 MNIST-form arrays.
    assert "predicted 7 (true 7) with probability" in text
    batch = next(line for line in text.splitlines() if line.startswith("first 8 test digits:"))
    assert batch.count("'") == 16
    assert (clone / "runs" / "tutorial" / "model.pt").exists()
    assert (clone / "runs" / "tutorial" / "evaluation" / "confusion.png").exists()
    assert not (clone / "notebooks" / "runs").exists()
    images = sum(1 for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= 4  # the digits, the loss curve, the predictions, the confusion matrix
