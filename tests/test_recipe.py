"""The one training recipe: the Python API and the command line start the same run (every
default shared, a language model's per-level ones included), a task's defaults fill what
is not given, old run files resume, and every task finds its split files one way."""

from __future__ import annotations

import json

import pytest

from rnnkit.tasks import (TASKS, captioner, classifier, conditioned_lm, lm, recognizer, tagger,
                          translator)
from rnnkit.tasks.common import find_split_file, split_of, split_sources
from rnnkit.train import TrainConfig
from conftest import run_cli
from tiny_data import tiny_files, tiny_scenes, tiny_speech

API = {"lm": lm.train_lm, "classifier": classifier.train_classifier,
       "tagger": tagger.train_tagger, "translator": translator.train_translator,
       "conditioned_lm": conditioned_lm.train_conditioned_lm,
       "recognizer": recognizer.train_recognizer, "captioner": captioner.train_captioner}
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Per task, the data config fields of a tiny data set."""
    root = tmp_path_factory.mktemp("data")
    files = tiny_files(root, n=20, seed=1)
    pairs = f"{files['source']},{files['target']}"
    return {"lm": {"data": files["text"], "level": "char"},
            "classifier": {"data": files["labelled"]}, "tagger": {"data": files["tagged"]},
            "translator": {"train": pairs, "valid": pairs, "level": "word", "min_count": 1},
            "conditioned_lm": {"data": files["labelled"]},
            "recognizer": {"data": tiny_speech(root), "sample_rate": 8000, "num_mel_bins": 8},
            "captioner": {"data": tiny_scenes(root), "image_size": 16}}


def _files(out) -> tuple[dict, dict]:
    """run.json (less the command line, which only the CLI records) and config.json."""
    run = json.loads((out / "run.json").read_text())
    run.pop("command", None)
    return run, json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("task", list(TASKS))
def test_python_api_and_command_line_start_the_same_run(task, data, tmp_path, capsys):
    spec = TASKS[task]
    assert task in API and task in data, f"add the new task {task!r} to this test"
    quiet = {"sample_chars": 0} if spec.run_options else {}      # run.json keeps it
    API[task](spec.data_config(**data[task]), {}, TrainConfig(max_steps=1, progress=False),
              tmp_path / "api", **QUIET, **quiet)
    flags = [a for key, value in data[task].items()
             for a in (f"--{key.replace('_', '-')}", str(value))]
    extra = ["--sample", "0"] if spec.run_options else []
    code, _, err = run_cli(["train", spec.command, *flags, "--max-steps", "1", "--no-progress",
                            "--out", tmp_path / "cli", *extra, "--json"], capsys)
    assert code == 0, err
    assert _files(tmp_path / "api") == _files(tmp_path / "cli")
    recorded = json.loads((tmp_path / "cli" / "run.json").read_text())["command"]
    assert recorded.startswith(f"rnnkit train {spec.command} ")
    run, _ = _files(tmp_path / "cli")
    defaults = {**spec.train_defaults}
    for key, table in spec.defaults_by:
        defaults.update(table.get(run["data"][key], {}))
    assert all(run["train"].get(k, run["data"].get(k)) == v for k, v in defaults.items())
    assert all(run["model"][k] == v for k, v in spec.model_defaults.items())


def test_a_character_model_gets_the_levels_defaults_from_the_api_too(data, tmp_path):
    lm.train_lm(lm.LMDataConfig(data=data["lm"]["data"], level="char"), {},
                TrainConfig(max_steps=1, progress=False), tmp_path / "c", **QUIET)
    run, config = _files(tmp_path / "c")
    assert (run["data"]["bptt"], run["data"]["batch_size"]) == (100, 32)
    assert (run["train"]["optimizer"], run["train"]["lr"], run["train"]["clip"]) == \
        ("adam", 2e-3, 1.0)
    assert (config["model"]["hidden_size"], config["model"]["num_layers"]) == (256, 2)
    assert lm.LMDataConfig(level="word").bptt == 35
    assert lm.LMDataConfig(level="word", bptt=7).bptt == 7


def test_given_training_fields_win_over_the_tasks_defaults(data, tmp_path):
    # a dict insists even on TrainConfig's own defaults; a TrainConfig's changed fields win
    lm.train_lm(lm.LMDataConfig(**data["lm"]), {"hidden_size": 8, "num_layers": 1},
                {"optimizer": "sgd", "lr": 20.0, "max_steps": 1, "progress": False},
                tmp_path / "d", **QUIET)
    assert _files(tmp_path / "d")[0]["train"]["optimizer"] == "sgd"
    classifier.train_classifier(classifier.ClassifierDataConfig(**data["classifier"]),
                                {"hidden_size": 4, "embedding_size": 4},
                                TrainConfig(lr=0.5, max_steps=1, progress=False),
                                tmp_path / "t", **QUIET)
    train = _files(tmp_path / "t")[0]["train"]
    assert (train["lr"], train["optimizer"], train["clip"]) == (0.5, "adam", 5.0)
    with pytest.raises(ValueError, match="train options: unknown"):
        classifier.train_classifier(classifier.ClassifierDataConfig(**data["classifier"]), {},
                                    {"learning_rate": 1.0}, tmp_path / "u", **QUIET)


def test_a_run_file_with_the_cell_options_of_rnnkit_0_1_resumes(data, tmp_path):
    out = tmp_path / "old"
    lm.train_lm(lm.LMDataConfig(**data["lm"]), {"cell": "rnn", "hidden_size": 8,
                                                "cell_options": {"nonlinearity": "relu"}},
                {"max_steps": 1, "progress": False}, out, **QUIET)
    run = json.loads((out / "run.json").read_text())
    model = run["model"]
    del model["cell_options"]
    model["nonlinearity"] = "relu"                     # rnnkit 0.1 wrote a field of its own
    (out / "run.json").write_text(json.dumps(run))
    summary = lm.train_lm(None, None, None, out, resume=True,
                          train_overrides={"max_steps": 2}, **QUIET)
    assert summary["step"] == 2
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["cell_options"] == {"nonlinearity": "relu"}


def test_the_recipe_refuses_a_bad_cell_before_reading_any_data(tmp_path):
    missing = classifier.ClassifierDataConfig(data=str(tmp_path / "nowhere.tsv"))
    with pytest.raises(ValueError, match="takes no option 'peephole'"):
        classifier.train_classifier(missing, {"cell": "gru", "cell_options": {"peephole": True}},
                                    None, tmp_path / "m", **QUIET)
    with pytest.raises(ValueError, match="nowhere.tsv"):
        classifier.train_classifier(missing, {}, None, tmp_path / "m", **QUIET)
    assert not (tmp_path / "m").exists()


# ---- split files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, split", [
    ("train.tsv", "train"), ("en_ewt-ud-dev.conllu", "valid"), ("val.de", "valid"),
    ("wiki.valid.tokens", "valid"), ("test_2016_flickr.en", "test"), ("SOURCE.md", None),
    ("LICENSE.txt", None), ("ptb.train.txt", "train")])
def test_split_of_a_file_name(name, split):
    assert split_of(name) == split


def test_every_task_finds_its_split_files_one_way(tmp_path):
    for name in ("train.tsv", "val.tsv", "test.tsv", "SOURCE.md", ".hidden-train.tsv"):
        (tmp_path / name).write_text("0\ta\n", encoding="utf-8")
    cfg = classifier.ClassifierDataConfig(data=str(tmp_path))
    assert split_sources(cfg) == tuple(str(tmp_path / n) for n in ("train.tsv", "val.tsv",
                                                                   "test.tsv"))
    pairs = translator.TranslationDataConfig(data=str(tmp_path))
    assert translator.find_pair_files(pairs, "valid") == (str(tmp_path / "val.tsv"), None)
    (tmp_path / "dev.tsv").write_text("0\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="several valid files"):
        find_split_file(str(tmp_path), "valid")
    with pytest.raises(ValueError, match="dev.tsv, val.tsv"):
        split_sources(cfg)
