"""A run directory is one training process's, and never a dead end: a lock per directory
(two real processes), a refused start leaves the directory as it found it, a run stopped
before its first checkpoint restarts in place, run.json's data paths resume from anywhere,
a finished run trains nothing, and temporary files of a killed write are cleared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit import checkpoint
from rnnkit.runlock import LOCK_FILE, RunLock
from conftest import run_cli
from tiny_data import tiny_files

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--sample", "0"]
SMALL = ["--hidden", "8", "--layers", "1", *QUIET]
STALE = ".train_state.safetensors.0123456789abcdef.tmp"       # as rnnkit.files names them


@pytest.fixture
def text(tmp_path) -> Path:
    return Path(tiny_files(tmp_path, n=20, seed=1)["text"])


def _train(out, *extra, data=None, capsys):
    args = ["train", "lm", "--out", out, *(QUIET if "--resume" in extra else SMALL), *extra]
    if data is not None:
        args += ["--data", data]
    return run_cli(args, capsys)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _holder(directory: Path) -> subprocess.Popen:
    """A second process that takes the directory's lock and sleeps."""
    code = ("import sys, time\nfrom rnnkit.runlock import RunLock\n"
            "lock = RunLock(sys.argv[1]); lock.acquire()\nprint('locked', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _rnnkit(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnkit", *map(str, args)], env=_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=120)


# -- 1. the lock ------------------------------------------------------------------------------

def test_a_locked_directory_refuses_a_second_training_and_resume(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "2", data=text, capsys=capsys)[0] == 0
    weights = (out / checkpoint.WEIGHTS).read_bytes()
    fresh = tmp_path / "fresh"
    holders = [_holder(out), _holder(fresh)]
    try:
        for directory, holder, args in (
                (out, holders[0], ["--resume", "--max-steps", "4", *QUIET]),
                (fresh, holders[1], ["--data", text, "--max-steps", "2", *SMALL])):
            done = _rnnkit("train", "lm", "--out", directory, *args)
            assert done.returncode == 2, done.stderr
            assert str(directory) in done.stderr and f"PID {holder.pid}" in done.stderr
            assert "Traceback" not in done.stderr
        assert sorted(os.listdir(fresh)) == [LOCK_FILE]         # nothing of the refused run
        # reading the model stays allowed while its directory is locked
        done = _rnnkit("eval", out, "--data", text)
        assert done.returncode == 0, done.stderr
        assert (out / checkpoint.WEIGHTS).read_bytes() == weights
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(text, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_FILE).read_text().split()[0] == str(holder.pid)   # left behind
    done = _rnnkit("train", "lm", "--data", text, "--out", out, "--max-steps", "2", *SMALL)
    assert done.returncode == 0, done.stderr
    assert (out / checkpoint.TRAIN_STATE).is_file()
    assert not (out / LOCK_FILE).exists()                   # released (and removed) at the end


def test_the_lock_is_released_on_any_exit(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "1", data=text, capsys=capsys)[0] == 0
    assert not (out / LOCK_FILE).exists()
    assert _train(out, "--max-steps", "1", data=text, capsys=capsys)[0] == 2   # refused
    assert not (out / LOCK_FILE).exists()
    with RunLock(out):                                      # free again after both
        assert (out / LOCK_FILE).read_text().split()[0] == str(os.getpid())
        with pytest.raises(ValueError, match=f"PID {os.getpid()}"):
            RunLock(out).acquire()                          # one holder, even in one process
    assert not (out / LOCK_FILE).exists()


# -- 5. recovery without dead ends -----------------------------------------------------------

def test_a_refused_start_leaves_the_directory_as_it_found_it(text, tmp_path, capsys):
    out = tmp_path / "absent" / "run"
    code, _, err = _train(out, "--hidden", "0", data=text, capsys=capsys)
    assert code == 2 and "hidden_size" in err
    assert not (tmp_path / "absent").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert _train(kept, "--hidden", "0", data=text, capsys=capsys)[0] == 2
    assert os.listdir(kept) == ["notes.txt"]
    code, _, err = _train(kept / "notes.txt", "--max-steps", "1", data=text, capsys=capsys)
    assert code == 2 and "cannot be used as a run directory" in err, err
    assert os.listdir(kept) == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"
    assert _train(out, "--max-steps", "1", data=text, capsys=capsys)[0] == 0   # no dead end
    code, _, err = _train(tmp_path / "nothing", "--resume", capsys=capsys)
    assert code == 2 and "no such run directory" in err, err
    assert not (tmp_path / "nothing").exists()


def _unfinished(out: Path) -> None:
    """``out`` as a run killed before its first checkpoint leaves it."""
    for name in (checkpoint.TRAIN_STATE, checkpoint.WEIGHTS, checkpoint.CONFIG):
        (out / name).unlink()
    assert (out / "run.json").is_file() and (out / "tokenizer.json").is_file()


def test_a_run_stopped_before_its_first_checkpoint_restarts_in_place(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "1", data=text, capsys=capsys)[0] == 0
    _unfinished(out)
    code, _, err = _train(out, "--resume", capsys=capsys)
    assert code == 2 and "no checkpoint" in err and "without --resume" in err, err
    (out / "run.json").rename(tmp_path / "run.json")         # killed while writing run.json
    code, _, err = _train(out, "--resume", capsys=capsys)
    assert code == 2 and "no run to resume" in err and "without --resume" in err, err
    (tmp_path / "run.json").rename(out / "run.json")
    (out / STALE).write_bytes(b"half")
    code, log, err = _train(out, "--max-steps", "2", data=text, capsys=capsys)
    assert code == 0, err
    assert "unfinished start" in log
    assert (out / checkpoint.TRAIN_STATE).is_file() and not (out / STALE).exists()
    code, _, err = _train(out, "--max-steps", "2", data=text, capsys=capsys)
    assert code == 2 and "holds a model or run already" in err     # a real run is kept


def test_run_json_holds_absolute_paths_and_resumes_from_anywhere(text, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.chdir(text.parent)
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "1", data=text.name, capsys=capsys)[0] == 0
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["data"] == str(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = _train(out, "--resume", "--max-steps", "2", capsys=capsys)
    assert code == 0, err
    # an older run.json with the path as given still resumes from where it was made
    run = json.loads((out / "run.json").read_text())
    run["data"]["data"] = text.name
    (out / "run.json").write_text(json.dumps(run))
    monkeypatch.chdir(text.parent)
    code, _, err = _train(out, "--resume", "--max-steps", "3", capsys=capsys)
    assert code == 0, err


def test_translator_pairs_are_made_absolute_part_by_part(tmp_path, monkeypatch):
    from rnnkit.tasks.common import absolute_paths
    from rnnkit.tasks.translator import TranslationDataConfig

    files = tiny_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    pairs = absolute_paths(TranslationDataConfig(train="pairs.de,pairs.en", valid="pairs.de, "
                                                 "pairs.en"))
    both = f"{files['source']},{files['target']}"
    assert (pairs["train"], pairs["valid"], pairs["data"]) == (both, both, "")


def test_resuming_a_finished_run_trains_nothing(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "2", data=text, capsys=capsys)[0] == 0
    before = {n: (out / n).read_bytes() for n in (checkpoint.WEIGHTS, checkpoint.TRAIN_STATE,
                                                  "metrics.jsonl")}
    code, log, err = _train(out, "--resume", "--json", capsys=capsys)
    assert code == 0, err
    assert "finished" in log and '"reason": "finished"' in log
    assert {n: (out / n).read_bytes() for n in before} == before
    code, _, err = _train(out, "--resume", "--max-steps", "3", capsys=capsys)  # a new budget
    assert code == 0, err
    assert (out / checkpoint.TRAIN_STATE).read_bytes() != before[checkpoint.TRAIN_STATE]
    run = json.loads((out / "run.json").read_text())     # kept: the next resume's budget
    assert run["train"]["max_steps"] == 3 and len(run["resumed"]) == 1
    assert "--resume --max-steps 3" in run["resumed"][0]
    assert "then resumed with" in (out / "README.md").read_text()
    code, log, err = _train(out, "--resume", capsys=capsys)
    assert code == 0 and "step 3 of --max-steps 3" in log, err


def test_a_refused_resume_leaves_run_json_as_it_was(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "2", data=text, capsys=capsys)[0] == 0
    state = out / checkpoint.TRAIN_STATE
    state.write_bytes(state.read_bytes()[:100])                 # a damaged train state
    before = (out / "run.json").read_bytes()
    code, _, err = _train(out, "--resume", "--max-steps", "9", capsys=capsys)
    assert code == 2 and "corrupted or truncated" in err, err
    assert (out / "run.json").read_bytes() == before             # no budget, no "resumed"


def test_stale_temporary_files_are_removed_at_resume(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "1", data=text, capsys=capsys)[0] == 0
    (out / STALE).write_bytes(b"half")
    (out / "cache" / ".train.ids.fedcba9876543210.tmp").write_bytes(b"half")
    (out / ".notes.tmp").write_text("not rnnkit's")
    code, log, err = _train(out, "--resume", "--max-steps", "2", capsys=capsys)
    assert code == 0, err
    assert not (out / STALE).exists()
    assert not (out / "cache" / ".train.ids.fedcba9876543210.tmp").exists()
    assert (out / ".notes.tmp").exists() and "temporary file" in log
