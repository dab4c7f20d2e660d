"""Atomic writes leave the old file or the new one, never a broken one or a stray temporary;
JSON read errors name the file (rnnkit.files, and the data writers that use it)."""

import errno
import json
import os
import stat
import sys

import pytest

from rnnkit import files
from rnnkit.data.pycorpus import write_python_corpus
from rnnkit.data.stream import encode_to_cache
from rnnkit.data.tokenizers import build_tokenizer, load_tokenizer


def _disk_full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------- atomic_write

@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()],
                         ids=["exception", "ctrl_c"])
def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "x.json"
    files.write_json(path, {"good": 1})

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"half')
        raise error

    with pytest.raises(type(error)):
        files.atomic_write(path, half_then_fail)
    assert files.read_json(path) == {"good": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_failed_fsync_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    files.write_text(path, "old\n")
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["x.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_new_file_has_ordinary_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        files.write_text(tmp_path / "new.txt", "x")
        (tmp_path / "old.txt").write_text("x")             # as open() makes a file
        files.write_text(tmp_path / "old.txt", "y")        # replacing keeps it ordinary
    finally:
        os.umask(old)
    for name in ("new.txt", "old.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_write_creates_folders_and_writes_text_exactly(tmp_path):
    path = tmp_path / "a" / "b" / "x.txt"
    files.write_text(path, "é\r\nz")
    assert path.read_bytes() == "é\r\nz".encode("utf-8")
    files.write_json(path, {"ü": [1, 2]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"ü": [1, 2]}
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert os.listdir(path.parent) == ["x.txt"]


# ---------------------------------------------------------------- read_json

def test_read_json_missing_file(tmp_path):
    with pytest.raises(ValueError) as e:
        files.read_json(tmp_path / "none.json")
    assert str(e.value) == f"{tmp_path / 'none.json'}: no such file"


def test_read_json_not_utf8(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError) as e:
        files.read_json(path)
    assert str(e.value) == f"{path}: not valid UTF-8 at byte offset 7 (byte 0xff)"


def test_read_json_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1,\n  "b": }\n')
    with pytest.raises(ValueError) as e:
        files.read_json(path)
    assert str(e.value).startswith(f"{path}: not valid JSON (line 2 column 8: ")


@pytest.mark.parametrize("text, kind", [("[1, 2]", "array"), ('"s"', "string"),
                                        ("3", "number"), ("null", "null")])
def test_read_json_not_an_object(tmp_path, text, kind):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        files.read_json(path)
    assert str(e.value) == f"{path}: expected a JSON object, got {kind}"


def test_read_json_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=f"^{tmp_path}: cannot be read"):
        files.read_json(tmp_path)


# ---------------------------------------------------------------- the data writers

def test_tokenizer_save_failure_keeps_the_old_files_and_no_temporary(tmp_path, monkeypatch):
    build_tokenizer("word", ["a b"]).save(tmp_path)
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        build_tokenizer("word", ["c d e"]).save(tmp_path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["tokenizer.json"]
    assert load_tokenizer(tmp_path).vocab_size == 5            # <pad> <unk> <eos> a b


@pytest.mark.parametrize("error", [RuntimeError("bad line"), KeyboardInterrupt()],
                         ids=["exception", "ctrl_c"])
def test_cache_encoding_failure_leaves_no_temporary(tmp_path, error):
    tok = build_tokenizer("word", ["a b"])

    def lines():
        yield "a b"
        raise error

    with pytest.raises(type(error)):
        encode_to_cache(tok, lines(), tmp_path / "train.ids")
    assert os.listdir(tmp_path) == []


def test_python_corpus_failure_leaves_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_python_corpus(tmp_path / "corpus.txt", max_chars=1000)
    assert os.listdir(tmp_path) == []
