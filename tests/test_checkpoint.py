"""Checkpoints are safetensors + JSON, written atomically, and fail loudly when broken."""

import json

import pytest
import torch

from rnnkit import checkpoint
from rnnkit.models.lm import LanguageModel, LMConfig


def _model(seed=0):
    torch.manual_seed(seed)
    return LanguageModel(LMConfig(vocab_size=20, hidden_size=6, tie_weights=True))


def test_save_and_load_round_trip_keeps_tied_weights(tmp_path):
    a, b = _model(0), _model(1)
    checkpoint.save_model(tmp_path, a, {"task": "lm", "model": a.config.to_dict()})
    checkpoint.load_weights(tmp_path, b)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert b.head.weight is b.embedding.weight
    config = json.loads((tmp_path / checkpoint.CONFIG).read_text())
    assert config["task"] == "lm" and "rnnkit" in config


def test_truncated_file_is_a_clear_error(tmp_path):
    checkpoint.save_model(tmp_path, _model(), {"task": "lm"})
    path = tmp_path / checkpoint.WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        checkpoint.load_weights(tmp_path, _model())


def test_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "x.json"
    checkpoint.write_json(path, {"good": 1})

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("{half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"good": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]     # no temporary left


def test_model_directory_of_another_task(tmp_path):
    checkpoint.write_json(tmp_path / checkpoint.CONFIG, {"task": "classifier"})
    with pytest.raises(ValueError, match="expected a 'lm' model"):
        checkpoint.read_config(tmp_path, "lm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not an rnnkit model directory"):
        checkpoint.read_config(empty, "lm")
    with pytest.raises(ValueError, match="no such model directory"):
        checkpoint.read_config(tmp_path / "absent", "lm")


def test_weights_that_do_not_fit(tmp_path):
    checkpoint.save_model(tmp_path, _model(), {"task": "lm"})
    other = LanguageModel(LMConfig(vocab_size=20, hidden_size=7))
    with pytest.raises(ValueError, match="do not fit"):
        checkpoint.load_weights(tmp_path, other)


def test_a_run_stopped_before_its_first_model_says_so(tmp_path):
    """A run killed before its first validation holds a train state and no model: using it
    says that, and how to go on — not "not an rnnkit model directory"."""
    checkpoint.save_tensors(tmp_path / checkpoint.TRAIN_STATE, {"x": torch.zeros(2)},
                            {"step": 460})
    with pytest.raises(ValueError, match=r"no model saved yet .* --resume"):
        checkpoint.read_config(tmp_path, "lm")
