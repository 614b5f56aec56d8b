"""mnist-nn inspect: first-layer weights as pictures, a digit's activations through forward hooks, the
penultimate layer's features mapped by PCA and t-SNE; the extra it needs; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import mnist_nn
from mnist_nn.cli import main
from mnist_nn.data.datasets import load_dataset, normalize
from mnist_nn.lab.inspection import (
    activation_layers,
    first_layer,
    inspect_checkpoint,
    last_linear,
    penultimate_features,
    silhouette,
    weights_figure,
)
from mnist_nn.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from mnist_nn.models.networks import build_model

pytest.importorskip("sklearn")


@pytest.fixture
def toy_run(toy_dataset, tmp_path) -> Path:
    """The tutorial's MLP trained briefly on the toy bars: its checkpoint."""
    run = mnist_nn.train("tutorial", dataset="toy", data_dir=toy_dataset, out=tmp_path / "run", epochs=2, lr=0.002)
    return run.run_dir / "model.pt"


def _random_checkpoint(path: Path, model: str, **kwargs) -> Path:
    torch.manual_seed(0)
    meta = CheckpointMeta(model, kwargs, "toy", 0.2, 0.3, {})
    return save_checkpoint(path, build_model(model, **kwargs), meta)


def test_inspect_writes_the_weights_the_activations_and_the_feature_map(toy_run, toy_dataset, tmp_path, capsys):
    out = tmp_path / "inspection"
    assert main(["inspect", str(toy_run), "--out", str(out), "--data-dir", str(toy_dataset), "--index", "3"]) == 0
    text = capsys.readouterr().out
    assert "the first layer (Linear 784→128) as 128 pictures" in text
    report = json.loads((out / "inspection.json").read_text())
    assert report["first_layer"] == {"layer": "Linear 784→128", "pictures": 128}
    assert [layer["shape"] for layer in report["layers"]] == [[128], [256], [128], [64]]
    assert report["layers"][0]["layer"] == "layer 1: Linear 784→128 + ReLU"
    assert report["digit"]["index"] == 3 and report["features"]["digits"] == 200  # the toy's whole test set
    assert report["features"]["dims"] == 64
    for name in ("weights", "activations", "features"):
        width, height = Image.open(out / f"{name}.png").size
        assert width > 500 and height > 300, name


def test_a_trained_network_separates_the_classes_better_than_an_untrained_one(toy_run, toy_dataset, tmp_path):
    splits = load_dataset("toy", toy_dataset)
    labels = splits.test_labels.numpy()
    separation = []
    for path in (toy_run, _random_checkpoint(tmp_path / "random.pt", "tutorial-mlp")):
        checkpoint = load_checkpoint(path)
        images = normalize(splits.test_images, checkpoint.mean, checkpoint.std, "cpu")
        separation.append(silhouette(penultimate_features(checkpoint.model, images).numpy(), labels))
    trained, untrained = separation
    assert trained > untrained + 0.2 and trained > 0.8, separation


def test_the_weight_pictures_are_the_first_layers_rows_on_a_scale_centred_on_zero(toy_run):
    model = load_checkpoint(toy_run).model
    layer = first_layer(model)
    figure = weights_figure(layer, "tutorial-mlp")
    images = [axes.get_images()[0] for axes in figure.axes if axes.get_images()]
    assert len(images) == 128
    for index in (0, 77, 127):
        assert torch.equal(torch.as_tensor(images[index].get_array()), layer.weight[index].detach().reshape(28, 28))
    low, high = images[0].get_clim()
    assert low == -high and high > 0 and images[0].get_cmap().name == "RdBu_r"


def test_hooks_capture_what_the_network_computes(toy_run, toy_dataset):
    checkpoint = load_checkpoint(toy_run)
    model = checkpoint.model
    images = normalize(load_dataset("toy", toy_dataset).test_images[:50], checkpoint.mean, checkpoint.std, "cpu")
    layers, logits = activation_layers(model, images[:1])
    head = last_linear(model)
    with torch.inference_mode():
        assert torch.allclose(head(layers[-1].values), logits, atol=1e-5)
        features = penultimate_features(model, images, batch_size=16)
        assert features.shape == (50, 64) and torch.allclose(head(features), model(images), atol=1e-5)
    assert all(layer.values.min() >= 0 for layer in layers)  # ReLU outputs
    assert not model._forward_hooks and not head._forward_pre_hooks  # the hooks are removed afterwards
    assert all(not module._forward_hooks for module in model.modules())


def test_a_cnn_shows_its_filters_and_feature_maps(toy_dataset, tmp_path):
    checkpoint = _random_checkpoint(tmp_path / "cnn.pt", "cnn-fast", channels=[8, 16])
    report = inspect_checkpoint(checkpoint, out=tmp_path / "out", data_dir=toy_dataset, feature_digits=100)
    assert report["first_layer"] == {"layer": "Conv 5x5 1→8 stride 2", "pictures": 8}
    assert [layer["shape"] for layer in report["layers"]] == [[8, 14, 14], [16, 7, 7]]
    assert report["layers"][0]["layer"] == "layer 1: Conv 5x5 1→8 stride 2 + BatchNorm + ReLU"
    assert report["features"] | {"pca_variance": None} == {
        "digits": 100,
        "dims": 16 * 7 * 7,
        "pca_variance": None,
        "silhouette": report["features"]["silhouette"],
        "tsne_silhouette": report["features"]["tsne_silhouette"],
    }
    assert (tmp_path / "out" / "weights.png").stat().st_size > 5_000


def test_without_scikit_learn_the_command_says_which_extra_to_install(monkeypatch, tmp_path, capsys):
    import mnist_nn.lab.inspection as inspection

    real = inspection.find_spec
    monkeypatch.setattr(inspection, "find_spec", lambda name: None if name == "sklearn" else real(name))
    assert main(["inspect", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (
        'mnist-nn: error: `mnist-nn inspect` needs scikit-learn for its feature map: pip install "mnist-nn[lab]"\n'
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--index", "200"], "--index must be between 0 and 199, got 200"),
        (["--index", "-1"], "--index must be between 0 and 199, got -1"),
        (["--checkpoint-is-text"], "not a PyTorch file"),
    ],
)
def test_bad_input_is_one_line(toy_dataset, tmp_path, capsys, argv, fragment):
    checkpoint = _random_checkpoint(tmp_path / "model.pt", "tutorial-mlp")
    if argv == ["--checkpoint-is-text"]:
        checkpoint.write_text("not a checkpoint")
        argv = []
    out = tmp_path / "out"
    assert main(["inspect", str(checkpoint), "--out", str(out), "--data-dir", str(toy_dataset), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-nn: error: ") and fragment in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.realdata
def test_inspect_a_tutorial_checkpoint_trained_on_mnist(trained_checkpoint, mnist_dir, tmp_path):
    report = inspect_checkpoint(trained_checkpoint, out=tmp_path, data_dir=mnist_dir)
    assert report["first_layer"]["pictures"] == 128 and report["features"]["digits"] == 2000
    assert report["digit"] == report["digit"] | {"index": 0, "label": "7", "answer": "7"}
    # Ten digits in ten clusters: each digit nearer its own class than the others, in the features and the map.
    assert report["features"]["silhouette"] > 0.2 and report["features"]["tsne_silhouette"] > 0.3, report["features"]
