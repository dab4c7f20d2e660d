"""Every registered cell trains every task through its command line, and the cell options
are flags generated from the registry; a bad cell is one clear line with exit 2."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from rnnkit.cells import cell_names
from rnnkit.cells.registry import OPTION_HELP, all_options
from rnnkit.tasks import TASKS
from conftest import expect_cli_error, run_cli

from tiny_data import tiny_files, tiny_scenes, tiny_speech

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden", "3", "--max-steps", "2", "--no-progress", "--json"]
EMBED = ["--embedding-size", "3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Per task (by its command), the arguments that train it on a few tiny lines."""
    root = tmp_path_factory.mktemp("tiny")
    files = tiny_files(root)
    pairs = f"{files['source']},{files['target']}"
    return {
        "lm": ["--data", files["text"], "--level", "word", "--bptt", "4", "--batch-size", "2",
               "--layers", "1", "--sample", "0", *EMBED],
        "classifier": ["--data", files["labelled"], "--batch-size", "4", *EMBED],
        "tagger": ["--data", files["tagged"], "--batch-size", "4", "--layers", "1",
                   "--char-hidden", "2", "--char-embedding-size", "2", *EMBED],
        "translator": ["--train", pairs, "--valid", pairs, "--level", "word", "--min-count",
                       "1", "--batch-size", "4", *EMBED],
        "conditioned-lm": ["--data", files["labelled"], "--batch-size", "4", *EMBED],
        "recognizer": ["--data", tiny_speech(root), "--sample-rate", "8000", "--num-mel-bins",
                       "8", "--batch-size", "4"],
        "captioner": ["--data", tiny_scenes(root), "--image-size", "16", "--conv-channels", "2",
                      "--conv-layers", "2", "--batch-size", "4", *EMBED],
    }


@pytest.mark.parametrize("cell", cell_names())
@pytest.mark.parametrize("task", [spec.command for spec in TASKS.values()])
def test_every_cell_trains_every_task_from_the_command_line(task, cell, tiny, tmp_path,
                                                            capsys):
    assert task in tiny, f"give the new task {task!r} tiny arguments in this test"
    out = tmp_path / "m"
    code, text, err = run_cli(["train", task, "--out", out, "--cell", cell, *tiny[task],
                               *SMALL], capsys)
    assert code == 0, err
    summary = json.loads(text)
    assert summary["reason"] == "max_steps" and summary["step"] == 2
    assert math.isfinite(summary["valid"]["loss"])
    assert json.loads((out / "config.json").read_text())["model"]["cell"] == cell


def test_cell_options_are_flags_of_every_task_and_reach_the_config(tiny, tmp_path, capsys):
    code, text, _ = run_cli(["train", "classifier", "--out", tmp_path / "m", "--cell", "rnn",
                             "--nonlinearity", "relu", *tiny["classifier"], *SMALL], capsys)
    assert code == 0
    model = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert model["cell"] == "rnn" and model["cell_options"] == {"nonlinearity": "relu"}
    for spec in TASKS.values():                  # every option of every cell, every task
        with pytest.raises(SystemExit):
            run_cli(["train", spec.command, "--help"], capsys)
        help_text = capsys.readouterr().out
        for name in all_options():
            assert f"--{name.replace('_', '-')}" in help_text or \
                f"--no-{name.replace('_', '-')}" in help_text, (spec.command, name)
        for name in cell_names():
            assert name in help_text


def test_cell_options_from_a_config_file(tiny, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('cell = "lstm"\npeephole = true\n', encoding="utf-8")
    code, _, err = run_cli(["train", "lm", "--config", config, "--out", tmp_path / "m",
                            *tiny["lm"], *SMALL], capsys)
    assert code == 0, err
    model = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert model["cell_options"] == {"peephole": True}


@pytest.mark.parametrize("task", [spec.command for spec in TASKS.values()])
def test_unknown_cell_lists_the_registered_ones(task, tiny, tmp_path, capsys):
    message = expect_cli_error(["train", task, "--out", tmp_path / "m", "--cell", "lstn",
                                *tiny[task]], capsys, "unknown 'lstn'")
    assert all(name in message for name in cell_names())
    assert not (tmp_path / "m").exists()


def test_an_option_the_cell_does_not_take_names_both(tiny, tmp_path, capsys):
    assert "peephole" in OPTION_HELP
    expect_cli_error(["train", "lm", "--out", tmp_path / "m", "--cell", "gru", "--peephole",
                      *tiny["lm"]], capsys, "'gru'", "'peephole'")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("cell, fragments", [
    ("no_such_package.cells:Cell", ["cannot import 'no_such_package.cells'",
                                    "ModuleNotFoundError"]),
    ("examples.gated_cell:Missing", ["has no 'Missing'"]),
    ("examples.gated_cell:GatedCache", ["GatedCache is not a subclass of rnnkit.cells.Cell"]),
])
def test_a_bad_user_cell_says_why(cell, fragments, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    expect_cli_error(["train", "tagger", "--out", tmp_path / "m", "--cell", cell,
                      *tiny["tagger"]], capsys, *fragments)


def test_a_user_cell_trains_from_the_command_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    code, text, err = run_cli(["train", "lm", "--out", tmp_path / "m", "--cell",
                               "examples.gated_cell:GatedCell", *tiny["lm"], *SMALL], capsys)
    assert code == 0, err
    assert json.loads(text)["step"] == 2


def test_a_bad_flag_is_one_line(capsys):
    expect_cli_error(["train", "lm", "--hidden", "many"], capsys, "--hidden",
                     "rnnkit train lm --help")
    expect_cli_error(["train", "lm", "--no-such-flag"], capsys, "--no-such-flag")
    assert sys.modules.get("rnnkit.cli") is not None
