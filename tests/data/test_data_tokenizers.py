"""Word, char and byte-level BPE tokenizers (rnnkit.data.tokenizers)."""

import json
import os

import pytest

from rnnkit.data.tokenizers import (BpeTokenizer, CharTokenizer, WordTokenizer,
                                    build_tokenizer, load_tokenizer)

WORD_LINES = ["b a b", "c <unk> b", "a"]          # b:3 a:2 c:1, one literal <unk>


# ---------------------------------------------------------------- word level

def test_word_vocabulary_order_and_counts():
    tok = build_tokenizer("word", WORD_LINES)
    assert [tok.token(i) for i in range(tok.vocab_size)] == [
        "<pad>", "<unk>", "<eos>", "b", "a", "c"]
    assert tok.counts == [0, 1, 3, 3, 2, 1]        # <unk>: the literal one; <eos>: 3 lines
    assert (tok.pad_id, tok.unk_id, tok.eos_id, tok.line_end_id) == (0, 1, 2, 2)


def test_word_ties_sorted_by_token():
    tok = build_tokenizer("word", ["y x", "z"])
    assert [tok.token(i) for i in range(3, 6)] == ["x", "y", "z"]


def test_word_min_count_and_max_size_become_unk():
    tok = build_tokenizer("word", WORD_LINES, min_count=2)
    assert [tok.token(i) for i in range(tok.vocab_size)] == ["<pad>", "<unk>", "<eos>", "b", "a"]
    assert tok.counts == [0, 2, 3, 3, 2]           # literal <unk> + c
    tok = build_tokenizer("word", WORD_LINES, max_size=1)
    assert tok.vocab_size == 4
    assert tok.counts == [0, 4, 3, 3]              # literal <unk> + a, a, c


def test_word_counts_equal_counts_of_encoded_corpus():
    lines = ["the cat sat", "the <unk> cat", "", "dog"]
    tok = build_tokenizer("word", lines, min_count=2)
    ids = [i for line in lines for i in tok.encode_line(line)]
    assert tok.counts == [ids.count(i) for i in range(tok.vocab_size)]


def test_word_encode_line_maps_unknown_and_appends_eos():
    tok = build_tokenizer("word", WORD_LINES)
    assert tok.encode_line("a zz  b <unk>") == [4, 1, 3, 1, 2]
    assert tok.encode_line("") == [2]
    assert tok.encode_line("<pad>") == [1, 2]      # padding is never a real token


def test_word_encode_prompt_policy():
    tok = build_tokenizer("word", WORD_LINES)
    assert tok.encode("a b\nc") == [4, 3, 2, 5]     # newline -> <eos>, none appended
    with pytest.raises(ValueError) as e:
        tok.encode("a qq b rr qq")
    assert "2 word(s) not in the vocabulary: 'qq', 'rr'" in str(e.value)
    assert tok.encode("a qq", unknown_policy="unk") == [4, 1]
    with pytest.raises(ValueError, match="unknown_policy"):
        tok.encode("a", unknown_policy="skip")


def test_word_decode():
    tok = build_tokenizer("word", WORD_LINES)
    assert tok.decode([3, 4, 2, 5, 0, 1]) == "b a\nc <unk>"
    assert tok.decode(tok.encode_line("a b")) == "a b\n"
    with pytest.raises(ValueError, match="token id 6 out of range for vocab_size 6"):
        tok.decode([6])


# ---------------------------------------------------------------- char level

def test_char_vocabulary_newline_is_a_character():
    tok = build_tokenizer("char", ["aba", "c"])
    assert [tok.token(i) for i in range(tok.vocab_size)] == ["<pad>", "<unk>", "\n", "a", "b", "c"]
    assert tok.counts == [0, 0, 2, 2, 1, 1]
    assert tok.eos_id is None and tok.line_end_id == 2


def test_char_encode_line_and_decode():
    tok = build_tokenizer("char", ["aba", "c"])
    assert tok.encode_line("abz") == [3, 4, 1, 2]
    assert tok.decode([3, 4, 2, 5, 0, 1]) == "ab\nc\ufffd"


def test_char_prompt_with_unknown_characters_raises():
    tok = build_tokenizer("char", ["aba", "c"])
    assert tok.encode("ab\nc") == [3, 4, 2, 5]
    with pytest.raises(ValueError) as e:
        tok.encode("aqéq")
    assert "2 character(s) not in the vocabulary: 'q', 'é'" in str(e.value)
    assert tok.encode("aq", unknown_policy="unk") == [3, 1]


def test_char_min_count():
    tok = build_tokenizer("char", ["aab"], min_count=2)
    assert [tok.token(i) for i in range(tok.vocab_size)] == ["<pad>", "<unk>", "\n", "a"]
    assert tok.counts == [0, 1, 1, 2]


# ---------------------------------------------------------------- byte-level BPE

BPE_LINES = ["the cat sat on the mat", "the dog sat on the log", "a <unk> word"] * 5


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("bpe", BPE_LINES, bpe_vocab_size=300)


def test_bpe_specials_and_line_end(bpe):
    assert [bpe.token(i) for i in range(3)] == ["<pad>", "<unk>", "<eos>"]
    assert 259 <= bpe.vocab_size <= 300
    ids = bpe.encode_line("the cat")
    assert ids[-1] == 2 and 2 not in ids[:-1]
    assert bpe.encode_line("a <unk> word").count(1) == 1


def test_bpe_roundtrip_of_unseen_unicode(bpe):
    text = "  héllo 日本 🙂\ttab\nsecond line  "
    ids = bpe.encode(text)
    assert 1 not in ids                            # bytes cover everything: no <unk>
    assert ids.count(2) == 1                       # the newline is <eos>
    assert bpe.decode(ids) == text
    assert bpe.decode(bpe.encode_line("the cat")) == "the cat\n"


def test_bpe_counts_equal_counts_of_encoded_corpus(bpe):
    ids = [i for line in BPE_LINES for i in bpe.encode_line(line)]
    assert bpe.counts == [ids.count(i) for i in range(bpe.vocab_size)]
    assert bpe.counts[2] == len(BPE_LINES) and bpe.counts[1] == 5


def test_bpe_encode_lines_matches_encode_line(bpe):
    lines = ["the mat", "", "ünïcode"]
    assert bpe.encode_lines(lines) == [bpe.encode_line(s) for s in lines]


def test_bpe_needs_reiterable_lines_and_large_enough_vocab():
    with pytest.raises(ValueError, match="one-shot iterator"):
        build_tokenizer("bpe", iter(BPE_LINES))
    with pytest.raises(ValueError, match="bpe_vocab_size must be at least 259"):
        build_tokenizer("bpe", BPE_LINES, bpe_vocab_size=100)
    with pytest.raises(ValueError, match="max_size"):
        build_tokenizer("bpe", BPE_LINES, max_size=10)


# ---------------------------------------------------------------- build arguments

def test_build_tokenizer_checks_arguments():
    with pytest.raises(ValueError, match="level must be one of char, word, bpe"):
        build_tokenizer("sentencepiece", WORD_LINES)
    with pytest.raises(ValueError, match="min_count"):
        build_tokenizer("word", WORD_LINES, min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        build_tokenizer("char", WORD_LINES, max_size=-1)


def test_builders_stream_a_one_shot_iterator():
    tok = build_tokenizer("word", iter(WORD_LINES))
    assert tok.counts == [0, 1, 3, 3, 2, 1]


# ---------------------------------------------------------------- save / load

@pytest.mark.parametrize("level", ["word", "char"])
def test_save_load_roundtrip(tmp_path, level):
    tok = build_tokenizer(level, WORD_LINES)
    tok.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json"]
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok) and loaded.level == level
    assert [loaded.token(i) for i in range(loaded.vocab_size)] == [
        tok.token(i) for i in range(tok.vocab_size)]
    assert loaded.counts == tok.counts
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode_line("b c zz") == tok.encode_line("b c zz")


def test_bpe_save_load_roundtrip(tmp_path, bpe):
    bpe.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["hf_tokenizer.json", "tokenizer.json"]
    for name in os.listdir(tmp_path):
        json.loads((tmp_path / name).read_text(encoding="utf-8"))   # JSON, not pickle
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BpeTokenizer)
    assert loaded.counts == bpe.counts and loaded.fingerprint() == bpe.fingerprint()
    assert loaded.encode("héllo the mat") == bpe.encode("héllo the mat")


def test_fingerprint_changes_with_vocabulary():
    a = build_tokenizer("word", WORD_LINES)
    b = build_tokenizer("word", WORD_LINES + ["d"])
    c = build_tokenizer("char", ["<pa"])
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def saved_word(tmp_path, **changes):
    build_tokenizer("word", WORD_LINES).save(tmp_path)
    file = tmp_path / "tokenizer.json"
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))
    return file


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path / "none")
    assert str(e.value) == f"{tmp_path / 'none' / 'tokenizer.json'}: no such file"


def test_load_corrupt_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"level": "word",\n  "tokens": [')
    with pytest.raises(ValueError, match=r"tokenizer.json: not valid JSON \(line 2"):
        load_tokenizer(tmp_path)


def test_load_unknown_level(tmp_path):
    file = saved_word(tmp_path, level="sentencepiece")
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value) == (f"{file}: unknown level 'sentencepiece' "
                            "(expected one of char, word, bpe)")


@pytest.mark.parametrize("changes, message", [
    ({"tokens": ["<unk>", "<pad>", "<eos>", "b", "a", "c"]},
     "token 0 is '<unk>', expected '<pad>'"),
    ({"tokens": ["<pad>", "<unk>", "<eos>", "b", "b", "c"]},
     "token 'b' appears twice (ids 3 and 4)"),
    ({"counts": [0, 1]}, "2 counts for 6 tokens"),
    ({"counts": "many"}, "'counts' must be a list of non-negative integers"),
    ({"format": "other"}, "not an rnnkit tokenizer (format 'other', expected 'rnnkit.tokenizer')"),
])
def test_load_rejects_bad_vocabulary(tmp_path, changes, message):
    file = saved_word(tmp_path, **changes)
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value) == f"{file}: {message}"


def test_load_bpe_with_missing_or_corrupt_hf_file(tmp_path, bpe):
    bpe.save(tmp_path)
    hf_file = tmp_path / "hf_tokenizer.json"
    hf_file.write_text('{"model": 3}')
    with pytest.raises(ValueError, match=f"{hf_file}: not a valid HuggingFace tokenizer"):
        load_tokenizer(tmp_path)
    hf_file.unlink()
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value) == f"{hf_file}: no such file"


def test_constructors_check_special_order():
    with pytest.raises(ValueError, match="token 2 is '<eos>', expected '\\\\n'"):
        CharTokenizer(["<pad>", "<unk>", "<eos>"], [0, 0, 0])
    with pytest.raises(ValueError, match="expected one character"):
        CharTokenizer(["<pad>", "<unk>", "\n", "ab"], [0, 0, 0, 0])
    assert WordTokenizer(["<pad>", "<unk>", "<eos>"], [0, 0, 0]).vocab_size == 3
