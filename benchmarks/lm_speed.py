"""Language-model speed against named peers, measured side by side in one run.

1. ``train``: training tokens/s of rnnkit's language model against PyTorch's
   word_language_model recipe written out here as the same model (embedding 200,
   2 x torch.nn.LSTM 200, dropout 0.2, full softmax over 10k words, SGD lr 20, clip 0.25,
   batch 20 x 35) — the two alternate in chunks of steps so machine noise hits both alike.
2. ``softmax``: rnnkit with class-factorised and adaptive softmax against full softmax on
   a synthetic Zipf corpus of 33,278 word types (WikiText-2's vocabulary size).
3. ``generate``: tokens/s sampling one stream from a 2 x 650 word model (10k words), rnnkit's
   generator (float, and its int8 copy from :func:`rnnkit.quantize.quantize_lm`) against
   the PyTorch example's loop (one model call per token, re-entering the module, ``exp`` of
   the scaled output and ``torch.multinomial``) and against onnxruntime running the model's
   exported step graph (float, and int8 by onnxruntime's dynamic quantisation); and the
   perplexity a trained PTB word model
   loses to int8 on the validation split (``--int8-model``, ``--int8-data``).

    python benchmarks/lm_speed.py [train] [softmax] [generate]   # default: all three

Writes ``benchmarks/results/lm_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _common import write_results  # noqa: E402
from rnnkit.generate import sample_tokens  # noqa: E402
from rnnkit.layers import detach_state  # noqa: E402
from rnnkit.models.lm import LanguageModel, LMConfig  # noqa: E402
from rnnkit.quantize import quantize_lm  # noqa: E402


class ExampleRNNModel(nn.Module):
    """The model of PyTorch's examples/word_language_model (LSTM variant), written out."""

    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.2, tie_weights=False):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        self.nlayers, self.nhid = nlayers, nhid

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.decoder.out_features)
        return torch.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        w = next(self.parameters())
        return (w.new_zeros(self.nlayers, bsz, self.nhid), w.new_zeros(self.nlayers, bsz, self.nhid))


def _example_trainer(model, data, lr=20.0, clip=0.25):
    """One step of the example's train(): manual SGD, clip_grad_norm_, repackage_hidden."""
    criterion = nn.NLLLoss()
    state = {"hidden": model.init_hidden(data.shape[1]), "i": 0}

    def step():
        model.train()
        i = state["i"]
        inputs, targets = data[i:i + 35], data[i + 1:i + 36].reshape(-1)
        state["i"] = (i + 35) % (data.shape[0] - 36)
        hidden = detach_state(state["hidden"])
        model.zero_grad()
        output, state["hidden"] = model(inputs, hidden)
        loss = criterion(output, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        return inputs.numel()
    return step


def _rnnkit_trainer(model, data, lr=20.0, clip=0.25):
    """The same step through rnnkit's model (the loop of rnnkit.train, without its I/O)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    state = {"hidden": None, "i": 0}

    def step():
        model.train()
        i = state["i"]
        inputs, targets = data[i:i + 35], data[i + 1:i + 36]
        state["i"] = (i + 35) % (data.shape[0] - 36)
        hidden, new = model(inputs, state["hidden"])
        state["hidden"] = detach_state(new)
        loss = model.nll(hidden, targets).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return inputs.numel()
    return step


def _race(steps: dict, rounds: int, chunk: int) -> dict:
    """Tokens/s of each step function: ``rounds`` rounds of ``chunk`` steps, interleaved."""
    rates = {name: [] for name in steps}
    for name, step in steps.items():                    # warm-up
        step()
    for _ in range(rounds):
        for name, step in steps.items():
            t0, tokens = time.perf_counter(), 0
            for _ in range(chunk):
                tokens += step()
            rates[name].append(tokens / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench_train(rounds: int) -> dict:
    V = 10000
    torch.manual_seed(0)
    data = torch.randint(0, V, (20000, 20))
    example = ExampleRNNModel(V, 200, 200, 2, dropout=0.2)
    ours = LanguageModel(LMConfig(vocab_size=V, hidden_size=200, num_layers=2, dropout=0.2))
    rates = _race({"pytorch_example": _example_trainer(example, data),
                   "rnnkit": _rnnkit_trainer(ours, data)}, rounds, chunk=10)
    return {**rates, "ratio": rates["rnnkit"] / rates["pytorch_example"]}


def _zipf_corpus(V: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, V + 1, dtype=torch.float64)
    return torch.multinomial(p / p.sum(), tokens, replacement=True, generator=g)


def bench_softmax(rounds: int) -> dict:
    V = 33278
    ids = _zipf_corpus(V, 400_000)
    counts = torch.bincount(ids, minlength=V).tolist()
    data = ids.view(-1, 20)
    steps = {}
    for head in ("full", "class", "adaptive"):
        torch.manual_seed(0)
        model = LanguageModel(LMConfig(vocab_size=V, hidden_size=200, num_layers=2,
                                       softmax=head), counts=counts)
        steps[head] = _rnnkit_trainer(model, data)
    rates = _race(steps, rounds, chunk=5)
    return {**rates, "class_vs_full": rates["class"] / rates["full"],
            "adaptive_vs_full": rates["adaptive"] / rates["full"], "vocab": V}


def bench_generate(tokens: int, rounds: int) -> dict:
    V = 10000
    torch.manual_seed(0)
    example = ExampleRNNModel(V, 650, 650, 2, dropout=0.5).eval()
    ours = LanguageModel(LMConfig(vocab_size=V, hidden_size=650, num_layers=2)).eval()

    def example_loop():                               # examples/word_language_model/generate.py
        hidden = example.init_hidden(1)
        input = torch.randint(V, (1, 1), dtype=torch.long)
        with torch.no_grad():
            for _ in range(tokens):
                output, hidden = example(input, hidden)
                word_weights = output.squeeze().div(1.0).exp().cpu()
                word_idx = torch.multinomial(word_weights, 1)[0]
                input.fill_(word_idx)
        return tokens

    int8, described = quantize_lm(ours)

    def loop_of(model):
        def loop():
            n = 0
            for _ in sample_tokens(model, [0], max_tokens=tokens, seed=0):
                n += 1
            return n
        return loop

    with tempfile.TemporaryDirectory() as folder:
        onnx_fp32, onnx_int8 = _onnx_step_sessions(ours, Path(folder))
        rates = _race({"pytorch_example": example_loop, "rnnkit": loop_of(ours),
                       "rnnkit_int8": loop_of(int8),
                       "onnxruntime": _onnx_loop(onnx_fp32, tokens, V),
                       "onnxruntime_int8": _onnx_loop(onnx_int8, tokens, V)}, rounds, chunk=1)
    base = rates["pytorch_example"]
    return {**rates, "ratio": rates["rnnkit"] / base, "int8_ratio": rates["rnnkit_int8"] / base,
            "onnx_ratio": rates["onnxruntime"] / base,
            "onnx_int8_ratio": rates["onnxruntime_int8"] / base, "int8": described,
            "tokens": tokens}


def _onnx_step_sessions(model, folder: Path):
    """onnxruntime sessions of the model's exported step graph (``rnnkit export``), float
    and int8 (onnxruntime's dynamic quantisation of its matrix products), one thread."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rnnkit.export import export_graphs

    export_graphs("lm", model, folder, "onnx")
    quantize_dynamic(str(folder / "step.onnx"), str(folder / "step.int8.onnx"),
                     weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return [ort.InferenceSession(str(folder / name), options,
                                 providers=["CPUExecutionProvider"])
            for name in ("step.onnx", "step.int8.onnx")]


def _onnx_loop(session, tokens: int, V: int):
    """Sampling one stream with the step graph: numpy only between the calls."""
    import numpy as np

    names = [i.name for i in session.get_inputs()]
    shapes = [i.shape for i in session.get_inputs()]

    def loop():
        rng = np.random.default_rng(0)
        states = [np.zeros((1, 1, shape[2]), np.float32) for shape in shapes[1:]]
        token = np.zeros(1, np.int64)
        for _ in range(tokens):
            log_probs, *states = session.run(None, dict(zip(names, [token, *states])))
            p = np.exp(log_probs[0].astype(np.float64))
            token = np.array([rng.choice(V, p=p / p.sum())], np.int64)
        return tokens
    return loop


def bench_int8_quality(model_dir: Path, data: Path) -> dict | None:
    """The perplexity a trained model loses to int8, on a validation file (None when the
    model or the data is absent)."""
    if not (model_dir / "model.safetensors").is_file() or not data.is_file():
        print(f"int8 quality: skipped ({model_dir} or {data} is missing)")
        return None
    from rnnkit.tasks import lm

    m = lm.evaluate_file(model_dir, data, int8=True)
    return {"model": str(model_dir), "data": str(data), "float_ppl": m["int8"]["float"]["ppl"],
            "int8_ppl": m["ppl"], "change": m["int8"]["ppl_change"],
            "quantised": m["int8"]["quantised"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="*", help="train | softmax | generate (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per peer")
    parser.add_argument("--int8-model", type=Path, default=ROOT / "runs" / "bench-ptb_1thread",
                        help="generate: a trained word model whose int8 perplexity cost is "
                        "measured (made by benchmarks/lm_quality.py)")
    parser.add_argument("--int8-data", type=Path, default=ROOT.parent / "shared" / "data" /
                        "ptb" / "ptb.valid.txt", help="its validation file")
    args = parser.parse_args(argv)
    args.which = args.which or ["train", "softmax", "generate"]
    unknown = set(args.which) - {"train", "softmax", "generate"}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    out = ROOT / "benchmarks" / "results" / "lm_speed.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    if "train" in args.which:
        r = results["train"] = bench_train(args.rounds)
        print(f"train 2x200 LSTM, V=10k: rnnkit {r['rnnkit']:.0f} tok/s, PyTorch example "
              f"{r['pytorch_example']:.0f} tok/s, ratio {r['ratio']:.2f}x")
    if "softmax" in args.which:
        r = results["softmax"] = bench_softmax(args.rounds)
        print(f"softmax V={r['vocab']}: full {r['full']:.0f}, class {r['class']:.0f} "
              f"({r['class_vs_full']:.1f}x), adaptive {r['adaptive']:.0f} "
              f"({r['adaptive_vs_full']:.1f}x) tok/s")
    if "generate" in args.which:
        r = results["generate"] = bench_generate(200, args.rounds)
        print(f"generate 2x650, V=10k, one stream: rnnkit {r['rnnkit']:.0f} tok/s, int8 "
              f"{r['rnnkit_int8']:.0f} tok/s, PyTorch example {r['pytorch_example']:.0f} "
              f"tok/s; ratios {r['ratio']:.2f}x and {r['int8_ratio']:.2f}x (int8; target "
              f"5x: {'met' if r['int8_ratio'] >= 5 else 'not met'}); onnxruntime "
              f"{r['onnxruntime']:.0f} tok/s ({r['onnx_ratio']:.2f}x), int8 "
              f"{r['onnxruntime_int8']:.0f} tok/s ({r['onnx_int8_ratio']:.2f}x)")
        q = results["int8_quality"] = bench_int8_quality(args.int8_model, args.int8_data)
        if q:
            print(f"int8 perplexity cost ({q['model']}, {Path(q['data']).name}): "
                  f"{q['float_ppl']:.2f} -> {q['int8_ppl']:.2f} ({100 * q['change']:+.2f}%)")
    write_results("lm_speed", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
