"""Greedy text generation from an exported language model, with onnxruntime and numpy only.

No torch and no rnnkit: the folder written by ``rnnkit export DIR --format onnx --out OUT``
holds everything — ``sequence.onnx`` (the prompt in one call), ``step.onnx`` (one token at
a time), ``export.json`` (state names and shapes) and the tokenizer files (plain JSON; a
byte-level BPE model also needs the HuggingFace ``tokenizers`` package). The output is the
same text, byte for byte, as ``rnnkit generate DIR --greedy --prime P --length N``::

    python examples/onnx_generate.py OUT --prime "the cat" --length 20

How rnnkit encodes and decodes (rnnkit.data.tokenizers): ids 0 <pad>, 1 <unk>, 2 the line
end (<eos>, or "\\n" for characters); a prompt's newline is the line end, an empty prompt
is the start of a line ("\\n"); a word or character the vocabulary lacks is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort

PAD_ID, UNK_ID, LINE_END_ID = 0, 1, 2


class ExportError(ValueError):
    """A folder that is not an rnnkit language-model export: the message names the file."""


def read_export(folder: str) -> dict:
    """``export.json`` of an rnnkit export of a language model, checked: the format, the
    task, and that the step and sequence graphs and the tokenizer are there."""
    path = os.path.join(folder, "export.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as error:
        raise ExportError(f"{path}: cannot be read ({error.strerror}); expected the folder "
                          f"'rnnkit export DIR --format onnx --out OUT' wrote") from None
    except ValueError as error:
        raise ExportError(f"{path}: not JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != "rnnkit.export":
        raise ExportError(f"{path}: not an rnnkit export (no \"format\": \"rnnkit.export\")")
    if meta.get("task") != "lm" or meta.get("export_format") != "onnx":
        raise ExportError(f"{path}: a {meta.get('task')!r} model in {meta.get('export_format')!r} "
                          f"format; this example runs ONNX language models")
    for name in ("step", "sequence"):
        graph = meta.get("graphs", {}).get(name, {}).get("file")
        if not graph or not os.path.isfile(os.path.join(folder, graph)):
            raise ExportError(f"{path}: the {name!r} graph's file is missing")
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        raise ExportError(f"{os.path.join(folder, 'tokenizer.json')}: missing")
    return meta


def session(folder: str, meta: dict, name: str) -> ort.InferenceSession:
    """An onnxruntime session of graph ``name`` (one thread), or ExportError naming it."""
    path = os.path.join(folder, meta["graphs"][name]["file"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:                   # onnxruntime's own errors have no base class
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"{path}: not an ONNX graph onnxruntime can run ({first})") from None


class Vocabulary:
    """rnnkit's char, word or byte-level BPE tokenizer, read from ``tokenizer.json``."""

    def __init__(self, folder: str):
        with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
            data = json.load(f)
        self.level = data["level"]
        if self.level == "bpe":
            from tokenizers import Tokenizer
            self.hf = Tokenizer.from_file(os.path.join(folder, data["hf_tokenizer"]))
        else:
            self.tokens = data["tokens"]
            self.lookup = {t: i for i, t in enumerate(self.tokens)}
            if self.level == "word":
                self.lookup["<pad>"] = UNK_ID          # padding is never a real token

    def encode(self, text: str) -> list[int]:
        """Free text -> ids (each newline the line end, none appended)."""
        if self.level == "char":
            ids = [self.lookup.get(c, UNK_ID) for c in text]
            unknown = [c for c, i in zip(text, ids) if i == UNK_ID]
        else:
            ids, unknown = [], []
            for k, line in enumerate(text.split("\n")):
                if k:
                    ids.append(LINE_END_ID)
                if self.level == "bpe":
                    found = self.hf.encode(line, add_special_tokens=False).ids
                    ids.extend(UNK_ID if i == PAD_ID else i for i in found)
                    continue
                for w in line.split():
                    ids.append(self.lookup.get(w, UNK_ID))
                    if w not in self.lookup:
                        unknown.append(w)
        if unknown:
            raise ExportError(f"--prime: not in the vocabulary: {unknown}")
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, as rnnkit's tokenizers decode them."""
        if self.level == "char":
            return "".join("\ufffd" if i == UNK_ID else self.tokens[i]
                           for i in ids if i != PAD_ID)
        segments: list[list[int]] = [[]]
        for i in ids:
            if i == LINE_END_ID:
                segments.append([])
            elif i != PAD_ID:
                segments[-1].append(i)
        if self.level == "bpe":
            return "\n".join(self.hf.decode(s, skip_special_tokens=False) if s else ""
                             for s in segments)
        return "\n".join(" ".join(self.tokens[i] for i in s) for s in segments)


def greedy_ids(folder: str, prime_ids: list[int], length: int) -> list[int]:
    """The ``length`` likeliest-next ids after the prompt: the sequence graph reads the
    prompt (T, 1) from the first state (zeros, or a cell's ``initial_value``), then the
    step graph one token (1,) at a time."""
    meta = read_export(folder)
    sequence, step = session(folder, meta, "sequence"), session(folder, meta, "step")
    names = [s["name"] for s in meta["states"]]
    states = [np.zeros([1 if d == "B" else d for d in s["shape"]], dtype=np.float32)
              + np.asarray(s.get("initial_value", 0.0), dtype=np.float32)   # zeros, mostly
              for s in meta["states"]]
    if not length:
        return []
    out = sequence.run(None, {"tokens": np.array(prime_ids, dtype=np.int64)[:, None],
                              **dict(zip(names, states))})
    log_probs, states = out[0][-1], out[1:]                         # (1, V), states
    ids = []
    for count in range(1, length + 1):
        token = int(np.argmax(log_probs[0]))                        # the first on ties
        ids.append(token)
        if count == length:
            break
        out = step.run(None, {"tokens": np.array([token], dtype=np.int64),
                              **dict(zip(names, states))})
        log_probs, states = out[0], out[1:]
    return ids


def generate(folder: str, prime: str, length: int) -> str:
    """The greedy continuation of ``prime`` (without it), as ``rnnkit generate --greedy``."""
    read_export(folder)
    vocab = Vocabulary(folder)
    prime_ids = vocab.encode(prime or "\n")
    if not prime_ids:
        raise ExportError("--prime: the prompt encodes to no token")
    ids = greedy_ids(folder, prime_ids, length)
    return vocab.decode(prime_ids + ids)[len(vocab.decode(prime_ids)):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the folder rnnkit export wrote")
    parser.add_argument("--prime", default="", help="prompt text (default: start of a line)")
    parser.add_argument("--length", type=int, default=200, help="tokens to generate")
    args = parser.parse_args()
    if args.length < 0:
        parser.error(f"--length: expected >= 0, got {args.length}")
    try:
        text = generate(args.folder, args.prime, args.length)
    except ExportError as error:
        print(f"onnx_generate: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.write(args.prime + text + "\n")


if __name__ == "__main__":
    main()
