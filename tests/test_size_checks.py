"""Model configs read from disk are checked before anything is allocated: every dimension
within its documented bound (rnnkit.config.MAX_*), and the tensors config.json implies
match the weights file's header before the model is built. The command line runs under an
address-space limit, so a regression fails instead of exhausting the machine."""

from __future__ import annotations

import json

import pytest

from rnnkit.config import MAX_LAYERS, MAX_SIZE, MAX_VOCAB
from rnnkit.models.classifier import ClassifierConfig
from rnnkit.models.lm import LMConfig
from rnnkit.tasks import lm
from conftest import cli_under_memory_limit
from tiny_data import tiny_files

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("size")
    files = tiny_files(root, n=12, seed=2)
    out = root / "model"
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="char"),
                {"hidden_size": 32, "num_layers": 1}, {"max_steps": 1}, out,
                log=lambda *_: None)
    return out, files["text"]


def _edited(trained, tmp_path, **fields):
    out, _ = trained
    copy = tmp_path / "model"
    copy.mkdir()
    for f in out.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["model"].update(fields)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_the_tiny_model_evaluates_under_the_limit(trained):
    out, text = trained
    result = cli_under_memory_limit("eval", str(out), "--data", text)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("field, value, bound", [("hidden_size", 10 ** 9, MAX_SIZE),
                                                 ("num_layers", 10 ** 6, MAX_LAYERS)])
def test_a_huge_dimension_in_config_json_is_refused_before_allocating(
        trained, tmp_path, field, value, bound):
    model = _edited(trained, tmp_path, **{field: value})
    result = cli_under_memory_limit("eval", str(model), "--data", trained[1])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{field}: expected a positive int and at most {bound}, got {value}" in result.stderr
    assert "config.json" in result.stderr


def test_a_config_that_does_not_fit_the_weights_names_the_tensor(trained, tmp_path):
    model = _edited(trained, tmp_path, hidden_size=48)
    result = cli_under_memory_limit("eval", str(model), "--data", trained[1])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "model.safetensors" in result.stderr and "tensor '" in result.stderr
    assert "parameters in the file" in result.stderr


def test_the_api_refuses_huge_dimensions():
    with pytest.raises(ValueError, match=f"hidden_size: expected a positive int and at most "
                                         f"{MAX_SIZE}, got 1000000000"):
        LMConfig(vocab_size=10, hidden_size=10 ** 9)
    with pytest.raises(ValueError, match="num_layers: .* at most 64"):
        LMConfig(vocab_size=10, num_layers=10 ** 6)
    with pytest.raises(ValueError, match=f"vocab_size: .* at most {MAX_VOCAB}"):
        ClassifierConfig(vocab_size=MAX_VOCAB + 1, num_classes=2)
    assert LMConfig(vocab_size=10, hidden_size=MAX_SIZE).hidden_size == MAX_SIZE


def test_the_parameter_count_implied_is_bounded(trained, monkeypatch):
    from rnnkit import config
    from rnnkit.checkpoint import read_config
    from rnnkit.tasks import TASKS
    from rnnkit.tasks.recipe import load_model

    out, _ = trained
    spec = TASKS["lm"]
    assert load_model(spec, out, read_config(out)) is not None
    monkeypatch.setattr(config, "MAX_PARAMETERS", 100)
    with pytest.raises(ValueError, match=r"config\.json: the model would have [\d,]+ "
                                         r"parameters, more than the 100 rnnkit loads"):
        load_model(spec, out, read_config(out))


def test_tied_weights_pass_the_header_check(tmp_path):
    files = tiny_files(tmp_path, n=12, seed=3)
    out = tmp_path / "tied"
    lm.train_lm(lm.LMDataConfig(data=files["text"], level="char"),
                {"hidden_size": 16, "num_layers": 1, "tie_weights": True}, {"max_steps": 1},
                out, log=lambda *_: None)
    result = cli_under_memory_limit("eval", str(out), "--data", files["text"])
    assert result.returncode == 0, result.stderr
