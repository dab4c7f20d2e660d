"""Token caches, TBPTT stream windows and sentence batches (rnnkit.data.stream)."""

import json
import os

import numpy as np
import pytest
import torch

from rnnkit.data import stream
from rnnkit.data.stream import (SentenceBatches, StreamBatches, TokenArray, TokenLines,
                                encode_to_cache, open_cache)
from rnnkit.data.tokenizers import WordTokenizer, build_tokenizer

LINES = ["b a b", "c zz", "a"]


@pytest.fixture
def tok():
    return build_tokenizer("word", ["b a b", "c"])          # <pad> <unk> <eos> b a c


# ---------------------------------------------------------------- caches

def test_encode_to_cache_writes_ids_and_sidecar(tmp_path, tok):
    path = tmp_path / "train.ids"
    arr = encode_to_cache(tok, LINES, path, source="s1")
    expected = [3, 4, 3, 2, 5, 1, 2, 4, 2]
    assert len(arr) == 9
    assert arr[0:9].tolist() == expected and arr[0:9].dtype == torch.long
    assert np.fromfile(path, dtype=np.uint16).tolist() == expected
    assert isinstance(arr.ids, np.memmap)
    meta = json.loads((tmp_path / "train.ids.json").read_text())
    assert (meta["dtype"], meta["length"], meta["vocab_size"], meta["source"]) == (
        "uint16", 9, 6, "s1")
    assert meta["fingerprint"] == tok.fingerprint()
    assert sorted(os.listdir(tmp_path)) == ["train.ids", "train.ids.json"]   # no temp left


def test_encode_in_small_chunks_gives_the_same_ids(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(stream, "_CHUNK_LINES", 2)
    monkeypatch.setattr(stream, "_FLUSH_IDS", 3)
    lines = [f"{'a b' * (k % 3)} c" for k in range(11)]
    arr = encode_to_cache(tok, iter(lines), tmp_path / "x.ids")
    assert arr[0:len(arr)].tolist() == [i for line in lines for i in tok.encode_line(line)]


def test_open_cache_reuses_and_detects_stale(tmp_path, tok):
    path = tmp_path / "train.ids"
    assert open_cache(path, tok) is None                          # absent
    encode_to_cache(tok, LINES, path, source="s1")
    again = open_cache(path, tok, source="s1")
    assert again[0:len(again)].tolist() == [3, 4, 3, 2, 5, 1, 2, 4, 2]
    assert open_cache(path, tok, source="s2") is None             # other input
    other = build_tokenizer("word", ["a b c"])                    # same size, other order
    assert other.vocab_size == tok.vocab_size
    assert open_cache(path, other, source="s1") is None
    with open(path, "ab") as f:                                   # length mismatch
        f.write(b"\x00\x00")
    assert open_cache(path, tok, source="s1") is None
    (tmp_path / "train.ids.json").write_text("{broken")
    assert open_cache(path, tok, source="s1") is None


def test_failed_encoding_leaves_no_files(tmp_path, tok):
    from rnnkit.data.text import CorpusSplit
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a b\n\xff\n")
    cache = tmp_path / "cache" / "c.ids"
    with pytest.raises(ValueError, match="not valid UTF-8 at byte offset 4"):
        encode_to_cache(tok, CorpusSplit(str(corpus)), cache)
    assert os.listdir(tmp_path / "cache") == []


def test_large_vocabulary_uses_uint32(tmp_path):
    words = [f"w{i}" for i in range(65536)]
    tok = WordTokenizer(["<pad>", "<unk>", "<eos>"] + words, [0] * 65539)
    arr = encode_to_cache(tok, ["w65535 w0"], tmp_path / "big.ids")
    assert arr.ids.dtype == np.uint32
    assert np.fromfile(tmp_path / "big.ids", dtype=np.uint32).tolist() == [65538, 3, 2]
    assert open_cache(tmp_path / "big.ids", tok)[0:3].tolist() == [65538, 3, 2]


def test_empty_cache_opens(tmp_path, tok):
    arr = encode_to_cache(tok, [], tmp_path / "e.ids")
    assert len(arr) == 0 and len(open_cache(tmp_path / "e.ids", tok)) == 0


def test_token_array_indexing():
    arr = TokenArray.from_ids([7, 8, 9, 10], vocab_size=20)
    assert arr[1] == 8 and isinstance(arr[1], int)
    assert arr[1:3].tolist() == [8, 9]
    assert arr.take(np.array([[0, 3], [2, 1]])).tolist() == [[7, 10], [9, 8]]


# ---------------------------------------------------------------- stream windows

def test_stream_windows_by_hand():
    # 23 ids, B=2 -> streams of n=11: [0..10] and [11..21]; id 22 is dropped.
    sb = StreamBatches(TokenArray.from_ids(range(23), 100), batch_size=2, bptt=4)
    x, y = sb.next_window()
    assert x.tolist() == [[0, 11], [1, 12], [2, 13], [3, 14]]
    assert y.tolist() == [[1, 12], [2, 13], [3, 14], [4, 15]]
    assert x.dtype == torch.long
    x, y = sb.next_window()
    assert x[:, 0].tolist() == [4, 5, 6, 7] and y[:, 1].tolist() == [16, 17, 18, 19]
    x, y = sb.next_window()                                 # last window: n - 1 - 8 = 2
    assert x.tolist() == [[8, 19], [9, 20]]
    assert y.tolist() == [[9, 20], [10, 21]]
    assert sb.next_window() is None and sb.next_window() is None
    sb.reset_epoch()
    assert sb.epoch == 1 and sb.next_window()[0][0].tolist() == [0, 11]


def test_stream_reads_the_memmap_in_place(tmp_path, tok):
    arr = encode_to_cache(tok, LINES * 4, tmp_path / "t.ids")
    sb = StreamBatches(arr, batch_size=3, bptt=2)
    assert sb.tokens is arr and isinstance(sb.tokens.ids, np.memmap)
    windows = list(sb)
    # the first input of column 1, then its targets of all windows, is stream 1
    n = len(arr) // 3
    col = torch.cat([windows[0][0][:1, 1]] + [w[1][:, 1] for w in windows]).tolist()
    assert col == arr[n:2 * n].tolist()


def reference_lengths(seed, bptt, k):
    g = torch.Generator()
    g.manual_seed(seed)
    out = []
    for _ in range(k):
        mean = bptt if torch.rand(1, generator=g).item() < 0.95 else bptt / 2
        out.append(min(max(5, int(torch.normal(float(mean), 5.0, (1,), generator=g).item())),
                       bptt + 20))
    return out


def test_random_lengths_follow_awd_lstm_rule():
    sb = StreamBatches(TokenArray.from_ids(range(20001), 20001), batch_size=1, bptt=12,
                       random_length=True, seed=3)
    lengths = [w[0].shape[0] for w in sb]
    assert sum(lengths) == 20000
    assert lengths[:-1] == reference_lengths(3, 12, len(lengths) - 1)
    assert min(lengths[:-1]) >= 5 and max(lengths) <= 32
    assert len(set(lengths)) > 5


def test_stream_resume_is_exact():
    rng = torch.Generator().manual_seed(0)
    ids = TokenArray.from_ids(torch.randint(0, 50, (3001,), generator=rng).tolist(), 50)

    def run(sb, n):
        out = []
        for _ in range(n):
            w = sb.next_window()
            if w is None:
                sb.reset_epoch()
                w = sb.next_window()
            out.append(w)
        return out

    full = run(StreamBatches(ids, 4, 10, random_length=True, seed=1), 200)  # > one epoch
    first = StreamBatches(ids, 4, 10, random_length=True, seed=1)
    head = run(first, 37)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = StreamBatches(ids, 4, 10, random_length=True, seed=99)
    resumed.load_state_dict(state)
    tail = run(resumed, 163)
    assert len(head + tail) == len(full)
    for (x, y), (xr, yr) in zip(full, head + tail):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    assert resumed.epoch >= 1


def test_stream_state_for_other_settings_is_rejected():
    ids = TokenArray.from_ids(range(100), 100)
    state = StreamBatches(ids, 4, 10).state_dict()
    with pytest.raises(ValueError, match="saved with batch_size=4, this one has batch_size=5"):
        StreamBatches(ids, 5, 10).load_state_dict(state)


def test_stream_too_few_tokens():
    with pytest.raises(ValueError, match="5 tokens are too few for batch_size=3"):
        StreamBatches(TokenArray.from_ids(range(5), 10), batch_size=3, bptt=2)


# ---------------------------------------------------------------- sentence batches

def test_sentence_batches_by_hand():
    sb = SentenceBatches([[5, 2], [6, 7, 2], [2]], batch_size=2, end_id=2, pad_id=0,
                         shuffle=False)
    assert len(sb) == 2
    x, y, lengths = sb.next_batch()
    assert x.tolist() == [[2, 2], [5, 6], [0, 7]]        # end_id, then line[:-1]
    assert y.tolist() == [[5, 6], [2, 7], [0, 2]]        # the line, its end included
    assert lengths.tolist() == [2, 3]
    x, y, lengths = sb.next_batch()
    assert (x.tolist(), y.tolist(), lengths.tolist()) == ([[2]], [[2]], [1])
    assert sb.next_batch() is None


def test_sentence_batches_shuffle_with_own_generator():
    lines = [[k, 2] for k in range(3, 13)]
    sb = SentenceBatches(lines, batch_size=4, end_id=2, pad_id=0, seed=5)
    g = torch.Generator()
    g.manual_seed(5)
    for epoch in range(2):
        order = torch.randperm(10, generator=g).tolist()
        got = [t for _, y, _ in sb for t in y[0].tolist()]
        assert got == [lines[k][0] for k in order]
        sb.reset_epoch()


def test_sentence_resume_is_exact():
    rng = np.random.default_rng(0)
    lines = [rng.integers(3, 30, size=rng.integers(0, 6)).tolist() + [2] for _ in range(23)]

    def run(sb, n):
        out = []
        for _ in range(n):
            b = sb.next_batch()
            if b is None:
                sb.reset_epoch()
                b = sb.next_batch()
            out.append(b)
        return out

    full = run(SentenceBatches(lines, 5, end_id=2, pad_id=0, seed=1), 17)
    first = SentenceBatches(lines, 5, end_id=2, pad_id=0, seed=1)
    head = run(first, 7)                                  # into the second epoch
    state = json.loads(json.dumps(first.state_dict()))
    resumed = SentenceBatches(lines, 5, end_id=2, pad_id=0, seed=42)
    resumed.load_state_dict(state)
    for a, b in zip(full, head + run(resumed, 10)):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_sentence_line_must_end_with_end_id():
    sb = SentenceBatches([[5, 2], [6, 7]], batch_size=2, end_id=2, pad_id=0, shuffle=False)
    with pytest.raises(ValueError, match="line 1 ends with id 7, expected the line end id 2"):
        sb.next_batch()


def test_token_lines_split_a_cache_at_line_ends(tmp_path, tok):
    arr = encode_to_cache(tok, LINES, tmp_path / "t.ids")     # [3 4 3 2 | 5 1 2 | 4 2]
    lines = TokenLines(arr, tok.line_end_id)
    assert len(lines) == 3
    assert [lines[k].tolist() for k in range(3)] == [[3, 4, 3, 2], [5, 1, 2], [4, 2]]
    x, y, lengths = SentenceBatches(lines, 3, end_id=2, pad_id=0, shuffle=False).next_batch()
    assert lengths.tolist() == [4, 3, 2]
    assert x[:, 1].tolist() == [2, 5, 1, 0] and y[:, 2].tolist() == [4, 2, 0, 0]
    with pytest.raises(ValueError, match="does not end with the line end id 2"):
        TokenLines(TokenArray.from_ids([3, 2, 4], 6), 2)
