"""Memory tasks: generators produce what the task definitions say; training runs."""

import math

import pytest
import torch

from rnnkit.cli import main
from rnnkit.diagnostics.memory import (BASELINES, REBER_SYMBOLS, adding_batch, copy_batch,
                                       reber_batch, train_memory_task)


def test_adding_batch_targets_are_the_marked_sums():
    g = torch.Generator().manual_seed(0)
    x, y = adding_batch(16, 30, g)
    assert x.shape == (30, 16, 2)
    marker = x[..., 1]
    assert torch.equal(marker.sum(0), torch.full((16,), 2.0))
    assert bool((marker[:15].sum(0) == 1).all())            # one marker in each half
    torch.testing.assert_close((x[..., 0] * marker).sum(0), y)
    # the baseline: predicting 1 has expected MSE Var(U + U) = 1/6
    big = adding_batch(20000, 10, g)[1]
    assert ((big - 1) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.01)


def test_copy_batch_layout():
    x, y = copy_batch(3, 7, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (27, 3)
    assert torch.equal(y[-10:], x[:10]) and bool((y[:-10] == 0).all())
    assert bool((x[16] == 9).all()) and bool((x[10:16] == 0).all())
    assert BASELINES["copy"](7) == pytest.approx(10 * math.log(8) / 27)


def test_reber_strings_follow_the_grammar():
    g = torch.Generator().manual_seed(0)
    x, y, position = reber_batch(20, 8, g)
    for b in range(20):
        n = int((y[:, b] >= 0).sum())
        s = REBER_SYMBOLS[x[0, b]] + "".join(REBER_SYMBOLS[i] for i in y[:n, b].tolist())
        assert s[0] == "B" and s[-1] == "E" and s[1] in "TP" and s[-2] == s[1]
        assert 8 <= len(s) - 4 <= 16
        assert REBER_SYMBOLS[y[position[b], b]] == s[1]     # the long-range symbol


def test_lstm_learns_short_adding_problem():
    r = train_memory_task("adding", 10, "lstm", steps=800, hidden=32)
    assert r.value < 0.5 * r.baseline


def test_bench_memory_cli_rejects_bad_lists(capsys):
    assert main(["bench", "memory", "--length", "50,x"]) == 2
    assert main(["bench", "memory", "--task", "sorting"]) == 2
    err = capsys.readouterr().err
    assert "--length" in err and "--task" in err and "Traceback" not in err


def test_bench_memory_cli_runs_and_plots(tmp_path, capsys):
    out = tmp_path / "memory.png"
    assert main(["bench", "memory", "--task", "copy", "--length", "5,8", "--cells", "rnn,gru",
                 "--steps", "2", "--hidden", "8", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("copy")]
    assert len(lines) == 4 and "baseline" in lines[0]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
