"""Recipe files: a base recipe and the fields it changes, read wherever a recipe name is taken; printed by
`mnist-nn recipes --show` from a name, a file or a run directory, and read back to the same recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_main
from mnist_nn.training.recipe_files import load_recipe_file, recipe_to_toml, run_recipe_toml
from mnist_nn.training.recipes import RECIPES, get_recipe


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_prints_as_a_file_that_reads_back_to_it(name, tmp_path, capsys):
    code, out, err = run_main(capsys, "recipes", "--show", name)
    assert code == 0, err
    assert out.startswith(f"# recipe {name}: ") and f'base = "{name}"' in out
    (tmp_path / "r.toml").write_text(out)
    assert load_recipe_file(tmp_path / "r.toml") == get_recipe(name)


def test_a_file_changes_only_the_fields_it_names(tmp_path):
    (tmp_path / "mine.toml").write_text('base = "tutorial"\nlr = 0.002\noptimizer = "adamw"\nepochs = 3\n')
    recipe = load_recipe_file(tmp_path / "mine.toml")
    tutorial = get_recipe("tutorial")
    assert (recipe.lr, recipe.optimizer, recipe.epochs) == (0.002, "adamw", 3)
    assert recipe.name == "mine" and recipe.batch_size == tutorial.batch_size and recipe.model == tutorial.model
    # An integer where a float is wanted is that float.
    (tmp_path / "int.toml").write_text("lr = 1\n")
    assert load_recipe_file(tmp_path / "int.toml").lr == 1.0 and isinstance(
        load_recipe_file(tmp_path / "int.toml").lr, float
    )


def test_the_files_fields_win_over_the_base_recipes_dataset_overrides(tmp_path):
    (tmp_path / "f.toml").write_text('base = "cnn-best"\ndataset = "fashion-mnist"\nepochs = 2\n')
    recipe = load_recipe_file(tmp_path / "f.toml")
    assert recipe.epochs == 2 and recipe.aug_flip == 0.5 and recipe.dataset_overrides == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("learning_rate = 0.1\n", "unknown key 'learning_rate'"),
        ('lr = "fast"\n', "key 'lr' must be a number, got 'fast'"),
        ("batch_size = 6.5\n", "key 'batch_size' must be an integer"),
        ("shuffle = 1\n", "key 'shuffle' must be true or false"),
        ("lr = -1.0\n", "key 'lr': learning rate must be positive"),
        ('optimizer = "lion"\n', "key 'optimizer': unknown optimizer 'lion'"),
        ('base = "nope"\n', "base must name a recipe"),
        ("lr = \n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key(text, fragment, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(text)
    for command in ("train", "lr-find"):
        code, _, err = run_main(capsys, command, "--recipe", tmp_path / "bad.toml", "--out", tmp_path / "out")
        assert_one_line_error(code, err, fragment)
        assert str(tmp_path / "bad.toml") in err
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_one_line(tmp_path, capsys):
    code, _, err = run_main(capsys, "train", "--recipe", tmp_path / "none.toml")
    assert_one_line_error(code, err, "does not exist")


def test_train_takes_a_file_and_flags_still_override_it(toy_dataset, tmp_path, capsys):
    (tmp_path / "toy.toml").write_text(
        'base = "tutorial"\ndataset = "toy"\nbatch_size = 16\nlr = 0.002\noptimizer = "rmsprop"\nepochs = 2\n'
    )
    out = tmp_path / "run"
    code, _, err = run_main(
        capsys, "train", "--recipe", tmp_path / "toy.toml", "--data-dir", toy_dataset, "--out", out, "--epochs", "1"
    )
    assert code == 0, err
    recipe = json.loads((out / "config.json").read_text())["recipe"]
    assert (recipe["name"], recipe["lr"], recipe["optimizer"], recipe["epochs"]) == ("toy", 0.002, "rmsprop", 1)
    # The run directory's recipe, printed as a file, trains again as the same recipe.
    code, text, err = run_main(capsys, "recipes", "--show", out)
    assert code == 0, err
    assert text.startswith(f"# the recipe of run {out}")
    (tmp_path / "again.toml").write_text(text)
    assert load_recipe_file(tmp_path / "again.toml").to_dict() == recipe
    assert run_recipe_toml(out) == text


def test_show_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_main(capsys, "recipes", "--show", tmp_path)
    assert_one_line_error(code, err, "is not a run directory")


def test_strings_with_quotes_and_tables_round_trip(tmp_path):
    recipe = get_recipe("tutorial").replace(description='a "quoted" \\ name, 中文', model_kwargs={"hidden": [32, 16]})
    (tmp_path / "q.toml").write_text(recipe_to_toml(recipe, base="tutorial"))
    assert load_recipe_file(Path(tmp_path / "q.toml")) == recipe
