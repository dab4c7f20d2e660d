"""`rnnkit export --int8`: onnxruntime's dynamic quantisation of the exported graphs — the
step and sequence graphs shrink, stay close to PyTorch's float outputs (within the
quantisation error) without being the float graphs; other formats refuse it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import expect_cli_error, run_cli
from parity import flat_state, random_state, session
from rnnkit.tasks import lm
from tiny_data import write_lines


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8-export")
    text = write_lines(root / "text.txt", ["the cat sat on a mat", "a dog ran"] * 20)
    out = root / "lm"
    lm.train_lm(lm.LMDataConfig(data=text, level="word"),
                {"hidden_size": 64, "num_layers": 2}, {"max_steps": 3}, out,
                log=lambda *_: None)
    return out


def test_int8_graphs_are_smaller_and_close(model_dir, tmp_path, capsys):
    for name, extra in (("float", []), ("int8", ["--int8"])):
        code, _, err = run_cli(["export", model_dir, "--out", tmp_path / name, *extra], capsys)
        assert code == 0, err
    meta = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert meta["int8"].startswith("onnxruntime's dynamic quantisation")
    assert meta["command"].endswith("--int8")
    for graph in ("step.onnx", "sequence.onnx"):
        small, big = (tmp_path / d / graph for d in ("int8", "float"))
        assert small.stat().st_size < 0.6 * big.stat().st_size
    model, _, _ = lm.load_lm(model_dir)
    tokens = torch.randint(0, model.config.vocab_size, (5, 3))
    state = random_state(model, 3)
    with torch.no_grad():
        want = model.log_probs(model(tokens, state)[0]).numpy()
    names = [i.name for i in session(tmp_path / "int8" / "sequence.onnx").get_inputs()][1:]
    feeds = {"tokens": tokens.numpy(), **{n: t.numpy() for n, t in
                                          zip(names, flat_state(state))}}
    got = session(tmp_path / "int8" / "sequence.onnx").run(None, feeds)[0]
    exact = session(tmp_path / "float" / "sequence.onnx").run(None, feeds)[0]
    assert np.abs(exact - want).max() < 1e-4
    assert 0 < np.abs(got - want).max() < 0.05


def test_int8_only_for_onnx(model_dir, tmp_path, capsys):
    expect_cli_error(["export", model_dir, "--out", tmp_path / "x", "--format", "torch-export",
                      "--int8"], capsys, "--int8", "--format onnx")
    assert not (tmp_path / "x").exists()
