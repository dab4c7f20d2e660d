"""Strict UTF-8 line reading and corpus split discovery (rnnkit.data.text)."""

import os

import pytest

from rnnkit.data.text import (CorpusSplit, check_text_file, count_lines, find_splits,
                              iter_lines, iter_split_lines, split_words_of)

SHARED = "/work/shared/data"


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- reading lines

def test_iter_lines_drops_newlines_crlf_and_bom(tmp_path):
    f = write(tmp_path / "a.txt", b"\xef\xbb\xbfab\r\ncd\n\nl\xc3\xa4st")
    assert list(iter_lines(f)) == ["ab", "cd", "", "läst"]
    assert count_lines(f) == 4


def test_trailing_newline_makes_no_extra_line(tmp_path):
    f = write(tmp_path / "a.txt", b"x\ny\n")
    assert list(iter_lines(f)) == ["x", "y"]


@pytest.mark.parametrize("data, offset, byte", [
    (b"h\xc3\xa9llo\nw\xc3\xb6rld\xff\n", 13, 0xff),   # "héllo\n" is 7 bytes, "wörld" 6
    (b"ab\xc3", 2, 0xc3),                             # truncated sequence at end of file
    (b"x\n\xe2\x82y\n", 2, 0xe2),                     # bad continuation byte on line 2
    (b"ok\n" * 5000 + b"\x80", 15000, 0x80),          # far past the first read buffer
])
def test_invalid_utf8_reports_exact_byte_offset(tmp_path, data, offset, byte):
    f = write(tmp_path / "bad.txt", data)
    expected = f"{f}: not valid UTF-8 at byte offset {offset} (byte 0x{byte:02x})"
    with pytest.raises(ValueError) as e:
        check_text_file(f)
    assert str(e.value) == expected


def test_nul_byte_is_binary_with_exact_offset(tmp_path):
    early = write(tmp_path / "early.bin", b"abc\x00def")
    with pytest.raises(ValueError) as e:
        list(iter_lines(early))
    assert str(e.value) == f"{early}: looks binary (NUL byte at offset 3)"
    late = write(tmp_path / "late.txt", b"a" * 10000 + b"\nb\x00")
    with pytest.raises(ValueError) as e:
        check_text_file(late)
    assert str(e.value) == f"{late}: looks binary (NUL byte at offset 10002)"


def test_binary_sniff_wins_over_utf8_error(tmp_path):
    f = write(tmp_path / "img.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match=r"looks binary \(NUL byte at offset 8\)"):
        check_text_file(f)


def test_empty_missing_and_folder_errors(tmp_path):
    empty = write(tmp_path / "empty.txt", b"")
    with pytest.raises(ValueError) as e:
        check_text_file(empty)
    assert str(e.value) == f"{empty}: file is empty"
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError) as e:
        list(iter_lines(missing))
    assert str(e.value) == f"{missing}: no such file"
    with pytest.raises(ValueError, match="is a folder"):
        check_text_file(tmp_path)


def test_iter_lines_is_lazy(tmp_path):
    f = write(tmp_path / "a.txt", b"first\n\xff\n")
    lines = iter_lines(f)
    assert next(lines) == "first"           # the bad byte on line 2 is not read yet
    with pytest.raises(ValueError, match="byte offset 6"):
        next(lines)


# ---------------------------------------------------------------- one file, split by lines

def numbered(tmp_path, n, name="corpus.txt"):
    return write(tmp_path / name, "".join(f"line {i}\n" for i in range(n)).encode())


def test_single_file_split_by_fraction(tmp_path):
    f = numbered(tmp_path, 10)
    c = find_splits(f, valid_fraction=0.2)
    assert c.train == CorpusSplit(str(f), 0, 8)
    assert c.valid == CorpusSplit(str(f), 8, None)
    assert c.test is None
    assert list(iter_split_lines(c.train)) == [f"line {i}" for i in range(8)]
    assert list(c.valid) == ["line 8", "line 9"]
    assert list(c.valid) == ["line 8", "line 9"]         # a split can be read again


def test_single_file_valid_has_at_least_one_line(tmp_path):
    c = find_splits(numbered(tmp_path, 3), valid_fraction=0.1)   # round(0.3) = 0 -> 1
    assert (c.train.line_stop, c.valid.line_start) == (2, 2)


def test_single_line_file_cannot_be_split(tmp_path):
    f = numbered(tmp_path, 1)
    with pytest.raises(ValueError, match="only 1 line"):
        find_splits(f)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_valid_fraction_must_be_inside_0_1(tmp_path, fraction):
    with pytest.raises(ValueError, match="valid_fraction"):
        find_splits(numbered(tmp_path, 10), valid_fraction=fraction)


def test_describe_names_file_and_range(tmp_path):
    f = numbered(tmp_path, 10)
    c = find_splits(f, valid_fraction=0.3)
    assert c.train.describe() == "corpus.txt lines 0-7"
    assert c.valid.describe() == "corpus.txt lines 7-end"


# ---------------------------------------------------------------- folders of split files

def folder(tmp_path, names):
    for name in names:
        write(tmp_path / name, f"{name} text\n".encode())
    return tmp_path


def test_folder_ptb_style_names(tmp_path):
    d = folder(tmp_path, ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt", "SOURCE.md"])
    c = find_splits(d)
    assert (c.train.path, c.valid.path, c.test.path) == (
        str(d / "ptb.train.txt"), str(d / "ptb.valid.txt"), str(d / "ptb.test.txt"))
    assert c.train == CorpusSplit(str(d / "ptb.train.txt"), 0, None)
    assert c.alternatives == ()


def test_folder_case_insensitive_and_dev(tmp_path):
    d = folder(tmp_path, ["TRAIN.txt", "Dev.txt"])
    c = find_splits(d)
    assert (os.path.basename(c.train.path), os.path.basename(c.valid.path)) == (
        "TRAIN.txt", "Dev.txt")
    assert c.test is None


def test_folder_split_words_are_those_of_every_task(tmp_path):
    """"val" names the valid split, as for the other tasks; a split word inside another
    word does not (interval.txt is no valid split)."""
    d = folder(tmp_path, ["corpus.train.txt", "corpus.val.txt", "interval.txt", "values.txt",
                          "testament.txt"])
    c = find_splits(d)
    assert os.path.basename(c.valid.path) == "corpus.val.txt"
    from rnnkit.tasks.common import split_of
    assert split_words_of("values.txt") == [] and split_words_of("testament.txt") == []
    assert split_words_of("train2016.txt") == [("train", "train")]
    for name in ("corpus.train.txt", "corpus.val.txt", "interval.txt", "en_ewt-ud-dev.conllu"):
        found = split_words_of(name)
        assert split_of(name) == (found[0][0] if found else None)


def test_folder_wikitext_token_names(tmp_path):
    d = folder(tmp_path, ["wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"])
    c = find_splits(d)
    assert [os.path.basename(s.path) for s in (c.train, c.valid, c.test)] == [
        "wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"]


def test_folder_without_valid_splits_train_lines(tmp_path):
    numbered(tmp_path, 10, name="train.txt")
    c = find_splits(tmp_path, valid_fraction=0.5)
    assert c.train == CorpusSplit(str(tmp_path / "train.txt"), 0, 5)
    assert c.valid == CorpusSplit(str(tmp_path / "train.txt"), 5, None)
    assert list(c.valid) == [f"line {i}" for i in range(5, 10)]


def test_folder_without_train_is_an_error(tmp_path):
    folder(tmp_path, ["valid.txt", "test.txt"])
    with pytest.raises(ValueError) as e:
        find_splits(tmp_path)
    assert str(e.value).startswith(
        f"{tmp_path}: no training split (expected a file named like train.txt)")


def test_folder_prefers_shortest_pattern_and_lists_others(tmp_path):
    d = folder(tmp_path, ["ptb.train.txt", "ptb.valid.txt", "ptb.char.train.txt",
                          "ptb.char.valid.txt"])
    c = find_splits(d)
    assert os.path.basename(c.valid.path) == "ptb.valid.txt"
    assert c.alternatives == (str(d / "ptb.char.train.txt"),)
    c = find_splits(d, variant="char")
    assert (os.path.basename(c.train.path), os.path.basename(c.valid.path)) == (
        "ptb.char.train.txt", "ptb.char.valid.txt")


def test_folder_with_equal_corpora_is_ambiguous(tmp_path):
    folder(tmp_path, ["train.en", "train.de"])
    with pytest.raises(ValueError, match=r"several training files \(train.de, train.en\)"):
        find_splits(tmp_path)


def test_name_matching_two_splits_is_an_error(tmp_path):
    folder(tmp_path, ["train_test.txt"])
    with pytest.raises(ValueError, match="train_test.txt: file name matches more than one"):
        find_splits(tmp_path)


def test_folder_checks_split_files_are_text(tmp_path):
    write(tmp_path / "train.txt", b"")
    with pytest.raises(ValueError, match="train.txt: file is empty"):
        find_splits(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        find_splits(tmp_path / "nothing")


# ---------------------------------------------------------------- the shared benchmark data

@pytest.mark.skipif(not os.path.isdir(SHARED), reason="shared benchmark data absent")
def test_find_splits_on_shared_corpora():
    ptb = find_splits(os.path.join(SHARED, "ptb"))
    assert [os.path.basename(s.path) for s in (ptb.train, ptb.valid, ptb.test)] == [
        "ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"]
    assert [os.path.basename(p) for p in ptb.alternatives] == ["ptb.char.train.txt"]
    char = find_splits(os.path.join(SHARED, "ptb"), variant="char")
    assert os.path.basename(char.test.path) == "ptb.char.test.txt"
    shakespeare = find_splits(os.path.join(SHARED, "tinyshakespeare", "input.txt"))
    assert (shakespeare.train.line_stop, shakespeare.valid.line_start) == (36000, 36000)
    with pytest.raises(ValueError, match="no training split"):
        find_splits(os.path.join(SHARED, "wikitext-2"))   # only valid.txt and test.txt
