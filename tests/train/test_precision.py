"""``--precision``: autocast for the forward computations, fp32 everywhere else."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from rnnkit.cli import main
from rnnkit.layers import RecurrentStack
from tests.tiny_data import tiny_files


@pytest.mark.parametrize("cell", ["lstm", "gru", "layernorm_lstm"])
def test_the_hand_engine_runs_in_float32_under_autocast(cell):
    torch.manual_seed(0)
    stack = RecurrentStack(5, 7, cell=cell, num_layers=2, backend="bptt")
    x = torch.randn(6, 3, 5, requires_grad=True)
    out, _ = stack(x)
    grads = torch.autograd.grad(out.sum(), [x, *stack.parameters()])
    with torch.autocast("cpu", torch.bfloat16):
        out16, _ = stack(x)
    grads16 = torch.autograd.grad(out16.sum(), [x, *stack.parameters()])
    assert out16.dtype == torch.float32 and torch.equal(out16, out)     # not one bit of bf16
    assert all(torch.equal(a, b) for a, b in zip(grads16, grads))


@pytest.mark.parametrize("backend", ["native", "bptt"])
def test_bf16_training_stays_near_fp32_and_saves_fp32(tmp_path, backend):
    files = tiny_files(tmp_path, n=40)
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{backend}-{precision}"
        assert main(["train", "lm", "--data", files["text"], "--level", "word", "--hidden", "16",
                     "--layers", "1", "--batch-size", "2", "--bptt", "6", "--max-steps", "6",
                     "--log-every", "1", "--backend", backend, "--precision", precision,
                     "--no-progress", "--out", str(out)]) == 0
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [e["loss"] for e in lines if e["split"] == "train"]
        for name in ("model.safetensors", "train_state.safetensors"):
            with safe_open(str(out / name), "pt") as f:
                assert {f.get_slice(k).get_dtype() for k in f.keys()
                        if k.startswith(("model.", "optim.")) or name == "model.safetensors"} \
                    == {"F32"}
    assert losses["bf16"] != losses["fp32"]                   # autocast did take effect …
    for a, b in zip(losses["bf16"], losses["fp32"]):         # … and bf16 rounding stays small
        assert a == pytest.approx(b, rel=2e-2)


def test_fp16_needs_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    files = tiny_files(tmp_path)
    assert main(["train", "lm", "--data", files["text"], "--precision", "fp16",
                 "--out", str(tmp_path / "r")]) == 2
    assert "fp16 trains on a CUDA device only; on the CPU use --precision bf16" in \
        capsys.readouterr().err
    assert not (tmp_path / "r").exists()
