"""The model card (rnnkit.card): a run writes README.md, which the Hugging Face Hub's own
parser (huggingface_hub.ModelCard) reads back with rnnkit's library name, the task's tags,
and validation figures equal to the best validation line of metrics.jsonl; `rnnkit card`
writes the same card for a directory without one; the directory still loads."""

from __future__ import annotations

import json
import math
import shlex

import pytest

from conftest import expect_cli_error, run_cli
from rnnkit.tasks import lm
from tiny_data import tiny_files

ModelCard = pytest.importorskip("huggingface_hub").ModelCard


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    files = tiny_files(root, n=20, seed=6)
    return root, files


def _best_valid(directory) -> dict:
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    return min(valid, key=lambda r: r.get("objective", r["loss"]))


@pytest.mark.parametrize(("task", "data", "figures"), [
    ("lm", "text", {"perplexity": "ppl", "loss": "loss"}),
    ("classifier", "labelled", {"accuracy": "accuracy", "macro-F1": "macro_f1",
                                "loss": "loss"}),
])
def test_a_run_writes_a_card_the_hub_reads(runs, capsys, task, data, figures):
    root, files = runs
    out = root / task
    args = ["train", task, "--data", files[data], "--out", str(out), "--max-steps", "3",
            "--hidden", "8", "--eval-every", "1"]
    if task == "lm":
        args += ["--sample", "0", "--level", "word"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "rnnkit"
    assert "rnnkit" in card.data.tags and "lstm" in card.data.tags
    best = _best_valid(out)
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == set(figures)
    for card_name, key in figures.items():
        assert results[card_name].dataset_split == "validation"
        assert math.isclose(results[card_name].metric_value, best[key], rel_tol=1e-5)
    assert shlex.join(["rnnkit", *args]) in card.text
    assert json.loads((out / "run.json").read_text())["command"] == shlex.join(["rnnkit",
                                                                                *args])


def test_rnnkit_card_writes_it_for_an_older_directory(runs, capsys):
    root, files = runs
    out = root / "older"
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="char"), {"hidden_size": 8},
                {"max_steps": 2}, out, log=lambda *_: None)
    written = (out / "README.md").read_text()
    (out / "README.md").unlink()
    code, _, err = run_cli(["card", str(out)], capsys)
    assert code == 0 and "README.md" in err
    assert (out / "README.md").read_text() == written
    assert "(command not recorded" in written                # trained from the API
    model, tokenizer, _ = lm.load_lm(out)                    # the card changes no loading
    assert model.config.hidden_size == 8


def test_card_of_a_folder_that_is_not_a_model(tmp_path, capsys):
    expect_cli_error(["card", str(tmp_path)], capsys, str(tmp_path), "config.json")
