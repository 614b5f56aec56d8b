"""errors.option: one message, in each caller's terms (flags on the command line, keywords in Python)."""

from __future__ import annotations

import pytest

from mnist_nn.core.errors import UserError, cli_flag, option


def test_an_option_renders_as_a_keyword_in_python_and_a_flag_on_the_command_line():
    error = UserError(f"{option('batch_size')} must be a positive integer, got 0")
    assert str(error) == "batch_size must be a positive integer, got 0"
    assert error.render() == "--batch-size must be a positive integer, got 0"


def test_values_and_placeholders():
    error = UserError(f"{option('device', 'cuda')} was asked for; pass {option('data_dir', metavar='DIR')}")
    assert str(error) == "device='cuda' was asked for; pass data_dir=DIR"
    assert error.render() == "--device cuda was asked for; pass --data-dir DIR"


def test_the_cli_maps_names_whose_flag_differs():
    error = UserError(f"unknown export format {option('fmt', 'png')}")
    assert error.render({"fmt": "--format"}) == "unknown export format --format png"
    assert cli_flag("compile_model", {"compile_model": "--compile"}) == "--compile"
    assert cli_flag("top_k") == "--top-k"


def test_a_prefix_keeps_the_marks_through_the_template():
    error = UserError(f"{option('top_k')} must be positive")
    wrapped = UserError(f"rank 1: {error.template}")
    assert wrapped.render() == "rank 1: --top-k must be positive" and str(wrapped) == "rank 1: top_k must be positive"


def test_plain_messages_are_unchanged():
    error = UserError("file C:\\data {x} not found")
    assert str(error) == error.render() == error.template == "file C:\\data {x} not found"


def test_an_option_name_is_an_identifier():
    with pytest.raises(ValueError, match="identifiers"):
        option("--top-k")


def test_library_checks_speak_python_to_python_callers():
    from mnist_nn.inference.predictor import check_options

    with pytest.raises(UserError) as caught:
        check_options(0, 0.5, 10)
    assert str(caught.value) == "top_k must be a positive integer, got 0"
    assert caught.value.render() == "--top-k must be a positive integer, got 0"
