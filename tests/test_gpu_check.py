"""benchmarks/gpu_check.py, the script run whenever a GPU is lent to us, tested on the CPU:
its ``--device cpu --quick`` run passes every check (or skips it, saying why) and covers
every cell, backend and task; a wrong result is reported as FAIL; without CUDA it says so."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit import checkpoint
from rnnkit.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _script()


def test_cpu_quick_run_passes_every_check_and_covers_every_path(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick",
                          "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "torch " + torch.__version__ in run.stdout.splitlines()[0]
    rows = json.loads(out.read_text())["rows"]
    for row in rows:        # every skip one the script states: a missing option, fp16 on a CPU
        assert row["result"] == "pass" or (row["result"] == "skipped" and row["reason"].startswith(
            ("no precision option", "refused on the CPU: --precision", "no --nproc",
             "CUDA autocast only"))), row
    names = [row["name"] for row in rows]
    for variant in gpu_check.cell_variants():
        for backend in gpu_check.backends_of(variant):
            for structure in ("1 layer", "2 layers bidir lengths"):
                assert f"cell {variant.label}, {structure} [{backend}]" in names
    cells = {rnnkit.make_cell(n).name for n in rnnkit.cell_names()}
    assert cells == {rnnkit.make_cell(v.name, **v.options).name
                     for v in gpu_check.cell_variants()}
    assert any("[native]" in n for n in names)
    for task in TASKS:
        for check in (f"train {task}", f"resume {task}", f"load {task} on cpu", f"use {task}",
                      f"precision bf16 {task}", f"precision fp16 {task}"):
            assert check in names
    assert {"train lm backend=bptt", "resume bf16 lm", "resume fp16 lm",
            "ddp lm --nproc 1", "use lm dynamic evaluation", "one-layer dropout draws nothing",
            "native LSTM under bf16 autocast"} <= set(names)


def test_the_results_file_holds_every_finished_row_while_the_run_goes_on(tmp_path,
                                                                         monkeypatch):
    """A run stopped midway (the device machine's time limit) leaves the rows it finished:
    the JSON is rewritten after each row, and says whether the run finished."""
    out = tmp_path / "gpu_check.json"
    seen = []

    def run_all(device, sizes, groups):
        first = gpu_check.run_check("first", "cpu", lambda: "one")
        seen.append(json.loads(out.read_text()))
        second = gpu_check.run_check("second", "cpu", lambda: "two")
        seen.append(json.loads(out.read_text()))
        return [first, second]

    monkeypatch.setattr(gpu_check, "run_all", run_all)
    monkeypatch.setattr(gpu_check, "on_row", gpu_check.on_row)     # restored afterwards
    assert gpu_check.main(["--device", "cpu", "--quick", "--json", str(out)]) == 0
    assert [[row["name"] for row in s["rows"]] for s in seen] == [["first"], ["first", "second"]]
    assert [s["finished"] for s in seen] == [False, False]
    final = json.loads(out.read_text())
    assert final["finished"] and [row["figure"] for row in final["rows"]] == ["one", "two"]


def test_a_wrong_result_is_a_fail_and_the_next_check_still_runs(capsys):
    case = gpu_check.cell_case(gpu_check.Variant("lstm"), gpu_check.DEEP, gpu_check.QUICK)
    right = gpu_check.run_check("right", "cpu",
                                lambda: gpu_check.check_cell(case, "bptt", torch.device("cpu")))
    assert right.result == "pass", right
    # a layout bug: the input and forget gate blocks of one weight swapped (gate order i,f)
    i, f, *_ = case.state["weight_hh_l1_reverse"].chunk(4)
    i[:], f[:] = f.clone(), i.clone()
    wrong = gpu_check.run_check("wrong", "cpu",
                                lambda: gpu_check.check_cell(case, "bptt", torch.device("cpu")))
    assert wrong.result == "FAIL" and "relative error" in wrong.reason, wrong
    assert "FAIL: " in capsys.readouterr().out

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    crashed = gpu_check.run_check("crashed", "cpu", broken)
    assert crashed.result == "FAIL" and "illegal memory access" in crashed.reason
    assert "Traceback" in crashed.traceback
    assert gpu_check.run_check("next", "cpu", lambda: "fine").result == "pass"


@pytest.mark.parametrize("change", ["perturbed", "nan", "shape", "missing"])
def test_compare_fails_on_any_difference_past_the_tolerance(change):
    expected = {"output": torch.randn(4, 3, dtype=torch.float64),
                "d weight_ih_l0": torch.randn(8, 2, dtype=torch.float64)}
    actual = {name: value.float() for name, value in expected.items()}
    assert gpu_check.compare(actual, expected, gpu_check.CELL_TOLERANCE).error < 1e-6
    grad = actual["d weight_ih_l0"]
    if change == "perturbed":
        grad[1, 1] += 1e-3 * grad.abs().max()
    elif change == "nan":
        grad[0, 0] = float("nan")
    elif change == "shape":
        actual["d weight_ih_l0"] = grad[:-1]
    else:
        del actual["d weight_ih_l0"]
    with pytest.raises(gpu_check.CheckFailed, match="weight_ih_l0"):
        gpu_check.compare(actual, expected, gpu_check.CELL_TOLERANCE)


def test_train_states_that_differ_in_one_bit_are_told_apart(tmp_path):
    weights = torch.randn(5)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    changed = weights.clone()
    changed[2] = torch.nextafter(changed[2], torch.tensor(float("inf")))
    for name, value in (("a", weights), ("b", weights.clone()), ("c", changed)):
        checkpoint.save_tensors(tmp_path / name / checkpoint.TRAIN_STATE,
                                {"model.weight": value}, {"step": 3})
    assert gpu_check.train_state_difference(tmp_path / "a", tmp_path / "b") is None
    assert "model.weight" in gpu_check.train_state_difference(tmp_path / "a", tmp_path / "c")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == gpu_check.NO_CUDA


def test_precision_checks_skip_without_the_option_or_on_a_clear_cpu_refusal(monkeypatch):
    def refused():
        with gpu_check.precision_refusals("fp16", torch.device("cpu")):
            raise ValueError("--precision fp16: fp16 trains on a CUDA device only")

    assert gpu_check.run_check("refused", "cpu", refused).result == "skipped"

    def stopped():            # a run that went wrong is a failure even on the CPU
        with gpu_check.precision_refusals("bf16", torch.device("cpu")):
            raise gpu_check.TrainingStopped("step 3: the training loss is nan; stopped")

    assert gpu_check.run_check("stopped", "cpu", stopped).result == "FAIL"

    @dataclasses.dataclass(frozen=True)
    class TrainConfigWithoutPrecision:
        epochs: int = 1

    monkeypatch.setattr(gpu_check, "TrainConfig", TrainConfigWithoutPrecision)
    with pytest.raises(gpu_check.Skipped, match="^no precision option$"):
        with gpu_check.precision_refusals("bf16", torch.device("cuda")):
            raise AssertionError("not reached: an rnnkit without the option trains nothing")
