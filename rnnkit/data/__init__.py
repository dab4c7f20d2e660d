"""The data layer for language modelling: corpora, tokenizers, token caches, batching.

>>> from rnnkit.data import find_splits, build_tokenizer, encode_to_cache, StreamBatches
>>> corpus = find_splits("data/ptb")                      # ptb.{train,valid,test}.txt
>>> tok = build_tokenizer("word", corpus.train)           # vocabulary from train only
>>> ids = encode_to_cache(tok, corpus.train, "cache/train.ids")
>>> batches = StreamBatches(ids, batch_size=20, bptt=35)
>>> inputs, targets = batches.next_window()               # (35, 20) each
"""

from rnnkit.data.stream import (SentenceBatches, StreamBatches, TokenArray, TokenLines,
                                cache_dtype, encode_to_cache, open_cache)
from rnnkit.data.text import (CorpusFiles, CorpusSplit, check_text_file, count_lines,
                              find_splits, iter_lines, iter_split_lines, split_by_lines)
from rnnkit.data.tokenizers import (LEVELS, BpeTokenizer, CharTokenizer, Tokenizer,
                                    WordTokenizer, build_tokenizer, load_tokenizer)

__all__ = [
    "iter_lines", "check_text_file", "count_lines", "CorpusSplit", "CorpusFiles",
    "find_splits", "split_by_lines", "iter_split_lines",
    "LEVELS", "Tokenizer", "WordTokenizer", "CharTokenizer", "BpeTokenizer",
    "build_tokenizer", "load_tokenizer",
    "TokenArray", "cache_dtype", "encode_to_cache", "open_cache",
    "StreamBatches", "TokenLines", "SentenceBatches",
]
