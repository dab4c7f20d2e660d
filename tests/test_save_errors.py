"""Disk full and other save errors: one clear message naming the file (and, for a full
disk, the space needed and free), the previous file intact, no temporary file left; a
loaded checkpoint does not keep its file mapped."""

import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError

from conftest import expect_cli_error, snapshot
from rnnkit import checkpoint, files
from rnnkit.data import build_tokenizer
from rnnkit.train.state import load_train_state

TEXT = "\n".join(["the cat sat on the mat", "the dog sat on the log"] * 40) + "\n"
SAFETENSORS_FULL = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                    'message: "No space left on device" })')


def _no_temporaries(folder):
    return not [p for p in folder.rglob("*.tmp")]


def _full_writer(monkeypatch):
    """Every write through atomic_write fails as a full disk does, after writing a little."""
    def fsync(file):
        with open(file, "ab") as f:
            f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(files, "_fsync", fsync)


def _assert_full_message(error, path):
    text = str(error.value)
    assert str(path) in text and "No space left on device" in text
    assert "needs about" in text and "free" in text
    assert error.value.errno == errno.ENOSPC


def test_safetensors_own_error_becomes_a_clear_oserror(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    checkpoint.save_tensors(path, {"a": torch.ones(3)})
    before = snapshot(tmp_path)

    def failing(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise SafetensorError(SAFETENSORS_FULL)
    monkeypatch.setattr(checkpoint, "save_file", failing)
    with pytest.raises(OSError) as error:
        checkpoint.save_tensors(path, {"a": torch.zeros(1000)})
    _assert_full_message(error, path)
    assert "4.0 KB" in str(error.value) or "KB" in str(error.value)
    assert snapshot(tmp_path) == before and _no_temporaries(tmp_path)


def test_other_safetensors_error_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"

    def failing(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: IoError(Os { code: 13, kind: "
                              "PermissionDenied, message: \"Permission denied\" })")
    monkeypatch.setattr(checkpoint, "save_file", failing)
    with pytest.raises(OSError, match="w.safetensors: cannot be written") as error:
        checkpoint.save_tensors(path, {"a": torch.ones(3)})
    assert error.value.errno == errno.EACCES
    assert not path.exists() and _no_temporaries(tmp_path)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)


@pytest.mark.parametrize("site", ["weights", "config", "json", "text", "tokenizer"])
def test_disk_full_at_each_save_site(tmp_path, monkeypatch, site):
    model = _Model()
    checkpoint.save_model(tmp_path, model, {"task": "toy"})
    files.write_json(tmp_path / "run.json", {"a": 1})
    files.write_text(tmp_path / "notes.txt", "old\n")
    tokenizer = build_tokenizer("char", TEXT.splitlines())
    tokenizer.save(tmp_path)
    before = snapshot(tmp_path)
    _full_writer(monkeypatch)
    actions = {
        "weights": (lambda: checkpoint.save_model(tmp_path, _Model(), {"task": "toy"}),
                    checkpoint.WEIGHTS),
        "config": (lambda: checkpoint.write_json(tmp_path / checkpoint.CONFIG, {"x": 2}),
                   checkpoint.CONFIG),
        "json": (lambda: files.write_json(tmp_path / "run.json", {"a": 2}), "run.json"),
        "text": (lambda: files.write_text(tmp_path / "notes.txt", "new\n" * 100), "notes.txt"),
        "tokenizer": (lambda: build_tokenizer("char", (TEXT + "xyz").splitlines()).save(tmp_path), None),
    }
    action, name = actions[site]
    with pytest.raises(OSError) as error:
        action()
    if name is not None:
        _assert_full_message(error, tmp_path / name)
    else:
        assert str(tmp_path) in str(error.value) and "No space left" in str(error.value)
    assert snapshot(tmp_path) == before and _no_temporaries(tmp_path)


def _trained_toy(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "train"))
    import test_trainer as toy
    return toy


def test_disk_full_while_saving_the_train_state(tmp_path, monkeypatch):
    toy = _trained_toy(tmp_path)
    toy.fit(toy.ToyTask(), tmp_path, toy.config(epochs=1))
    before = snapshot(tmp_path)
    _full_writer(monkeypatch)
    trainer = toy.Trainer(toy.ToyTask(), toy.config(epochs=1), tmp_path, {"task": "toy"},
                          log=lambda *_: None)
    trainer.window = toy.LossWindow(lambda: 0.0) if hasattr(toy, "LossWindow") else None
    from rnnkit.train.metrics import LossWindow
    trainer.window = LossWindow(lambda: 0.0)
    with pytest.raises(OSError) as error:
        trainer._save()
    _assert_full_message(error, tmp_path / checkpoint.TRAIN_STATE)
    assert snapshot(tmp_path) == before and _no_temporaries(tmp_path)


def test_disk_full_through_the_cli_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "m"

    def failing(tensors, filename, metadata=None):
        raise SafetensorError(SAFETENSORS_FULL)
    monkeypatch.setattr(checkpoint, "save_file", failing)
    expect_cli_error(["train", "lm", "--data", corpus, "--out", out, "--level", "char",
                      "--hidden", "8", "--layers", "1", "--batch-size", "4", "--bptt", "8",
                      "--max-steps", "3", "--sample", "0", "--no-progress"], capsys,
                     str(out / checkpoint.WEIGHTS), "No space left on device", "free")
    assert _no_temporaries(out)


def test_loaded_tensors_do_not_keep_the_file_mapped(tmp_path):
    path = tmp_path / "t.safetensors"
    checkpoint.save_tensors(path, {"a": torch.arange(1000.0), "b": torch.ones(10)})
    tensors, _ = checkpoint.load_tensors(path)
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            assert str(path) not in maps.read()
    with open(path, "r+b") as f:               # overwrite the data in place
        f.seek(200)
        f.write(b"\xff" * (path.stat().st_size - 200))
    assert torch.equal(tensors["a"], torch.arange(1000.0))
    assert torch.equal(tensors["b"], torch.ones(10))


def test_resumed_train_state_is_not_mapped(tmp_path):
    toy = _trained_toy(tmp_path)
    task = toy.ToyTask()
    trainer, _ = toy.fit(task, tmp_path, toy.config(epochs=1))
    path = tmp_path / checkpoint.TRAIN_STATE
    fresh = toy.ToyTask()
    resumed = toy.Trainer(fresh, toy.config(epochs=1), tmp_path, {"task": "toy"},
                          log=lambda *_: None)
    load_train_state(path, fresh, resumed.optimizer)
    state = {k: v.clone() for s in resumed.optimizer.state.values() for k, v in s.items()
             if torch.is_tensor(v)}
    assert state
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            assert str(path) not in maps.read()
    path.write_bytes(b"\0" * path.stat().st_size)      # the file replaced in place
    after = {k: v for s in resumed.optimizer.state.values() for k, v in s.items()
             if torch.is_tensor(v)}
    for k in state:
        assert torch.equal(state[k], after[k])


@pytest.mark.parametrize("meta", [{}, {"step": 1}, None])
def test_train_state_without_metadata_is_a_clear_error(tmp_path, meta):
    toy = _trained_toy(tmp_path)
    task = toy.ToyTask()
    trainer = toy.Trainer(task, toy.config(epochs=1), tmp_path, {"task": "toy"},
                          log=lambda *_: None)
    path = tmp_path / checkpoint.TRAIN_STATE
    if meta is None:                 # a safetensors file with no rnnkit metadata at all
        from safetensors.torch import save_file
        save_file({"x": torch.ones(2)}, str(path))
    else:
        checkpoint.save_tensors(path, {"x": torch.ones(2)}, meta)
    with pytest.raises(ValueError) as error:
        load_train_state(path, task, trainer.optimizer)
    assert str(path) in str(error.value) and "optimizer" in str(error.value)
    assert "not a complete train state" in str(error.value)


def test_real_full_tmpfs(tmp_path):
    """Where this process may mount a small tmpfs: a real ENOSPC from the kernel."""
    mount = tmp_path / "small"
    mount.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root on Linux to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        path = mount / "w.safetensors"
        checkpoint.save_tensors(path, {"a": torch.ones(1000)})
        before = path.read_bytes()
        with pytest.raises(OSError) as error:
            checkpoint.save_tensors(path, {"a": torch.ones(200_000)})     # 800 KB
        _assert_full_message(error, path)
        assert "781.3 KB" in str(error.value) or "KB" in str(error.value)
        assert path.read_bytes() == before and _no_temporaries(mount)
        with pytest.raises(OSError) as error:
            files.write_text(mount / "big.txt", "x" * 400_000)
        _assert_full_message(error, mount / "big.txt")
        assert not (mount / "big.txt").exists() and _no_temporaries(mount)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    """The run's start does this while holding its lock (tests/test_run_directory.py)."""
    from rnnkit.files import remove_stale_temporaries

    stale = tmp_path / ".train_state.safetensors.0123456789abcdef.tmp"
    stale.write_bytes(b"half")
    # safetensors' own, through which it writes ours (a kill -9 mid-save left one of 23 MB)
    theirs = tmp_path / ".tmpZggMal"
    theirs.write_bytes(b"half")
    kept = [tmp_path / ".mine.tmp", tmp_path / ".tmpfile1", tmp_path / "tmpZggMal"]
    for other in kept:                            # names neither makes: kept
        other.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale, theirs])
    assert not stale.exists() and not theirs.exists() and all(p.exists() for p in kept)


def test_safetensors_writes_through_a_temporary_of_the_name_removed(tmp_path):
    """The name safetensors gives the temporary file it writes through, seen during a
    save: the pattern above must match it, or a killed save leaves it behind for good."""
    import threading

    from rnnkit.checkpoint import save_tensors
    from rnnkit.files import TEMPORARY

    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(os.listdir(tmp_path))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(50_000_000)})
    finally:
        done.set()
        watcher.join()
    temporaries = seen - {"w.safetensors"}
    assert temporaries and all(TEMPORARY.fullmatch(name) for name in temporaries), seen


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_while_appending_a_metrics_line(tmp_path):
    from pathlib import Path

    from rnnkit.train.metrics import MetricsLog
    log = MetricsLog(tmp_path, "tok", "toy")
    log.path = Path("/dev/full")                 # every write: ENOSPC
    with pytest.raises(OSError) as error:
        log.record({"step": 1, "epoch": 0, "split": "train", "loss": 1.0})
    assert "/dev/full: cannot be written (No space left on device" in str(error.value)
    assert "free" in str(error.value)
    assert error.value.errno == errno.ENOSPC
