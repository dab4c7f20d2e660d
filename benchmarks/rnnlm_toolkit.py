"""Head-to-head with Mikolov's RNNLM toolkit (../shared/peers/rnnlm-0.4b) on PTB word: the
validation perplexity each system has reached after equal wall-time budgets, words/s, and
each one's test perplexity.

Systems (each one process, one thread, its wall time from its own start):

- ``rnnlm``      the toolkit with Mikolov's PTB settings: sigmoid hidden layer of 200, class
                 softmax of 100 classes, BPTT 4 in blocks of 10, learning rate halved once
                 validation stalls (its own schedule, until it stops);
- ``rnnme``      the same with hashed maximum-entropy direct connections
                 (``-direct 1000 -direct-order 3``: 10^9 hashed weights, order 3);
- ``mikolov``    rnnkit with Mikolov's model: ``rnn_sigmoid`` 1x200, class softmax of 100,
                 BPTT 10, his halving schedule (``--lr-schedule halving``, until it stops) —
                 in 20 streams with SGD of rate 5 on the mean loss rather than his per-word
                 SGD (one stream runs at about 570 words/s in rnnkit, the cost of a Python
                 step per 10 words, against the toolkit's 19k);
- ``mikolov_me`` the same with direct connections of order 3 in a table of 2^22 weights
                 (rnnkit updates its table densely, so a step costs O(table): 2^22 adds
                 about 60% to this small model's step, where the toolkit's sparse updates
                 make its 10^9 free);
- ``recipe``     rnnkit's best recipe: the 2x200 LSTM of ``lm_quality.py ptb``.

The toolkit is built from its source in a temporary folder (SOURCE.md gives the command).
Every system's validation perplexity is timestamped as it prints it; at each budget the
last value reported before it counts. At the end every system scores the test split.

Each system's validation perplexity after each epoch is kept too, and printed for the
pairs that train the same model (the toolkit against rnnkit's Mikolov model, without and
with direct connections).

    python benchmarks/rnnlm_toolkit.py --parallel 2           # 1, 5, 15, 30 min; ~1.5 h
    python benchmarks/rnnlm_toolkit.py --budgets 1 --parallel 2 rnnlm mikolov   # a smoke run

Writes ``benchmarks/results/rnnlm_toolkit.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _common import DATA, write_results  # noqa: E402

PTB = DATA / "ptb"
PEER = ROOT.parent / "shared" / "peers" / "rnnlm-0.4b"
SYSTEMS = ("rnnlm", "mikolov", "rnnme", "recipe", "mikolov_me")
PAIRS = (("rnnlm", "mikolov"), ("rnnme", "mikolov_me"))      # the same model in each
DIRECT = ["--direct-size", str(1 << 22), "--direct-order", "3"]
RNNLM_SETTINGS = ["-hidden", "200", "-class", "100", "-bptt", "4", "-bptt-block", "10",
                  "-rand-seed", "1", "-debug", "2"]
RNNKIT_SETTINGS = {
    "mikolov": ["--cell", "rnn_sigmoid", "--hidden", "200", "--layers", "1", "--softmax",
                "class", "--classes", "100", "--batch-size", "20", "--bptt", "10",
                "--optimizer", "sgd", "--lr", "5", "--clip", "5", "--lr-decay", "2",
                "--lr-schedule", "halving", "--epochs", "50", "--dropout", "0",
                "--eval-every", "2000"],
    "recipe": ["--cell", "lstm", "--hidden", "200", "--layers", "2", "--dropout", "0.2",
               "--tie-weights", "--batch-size", "20", "--bptt", "35", "--optimizer", "sgd",
               "--lr", "20", "--clip", "0.25", "--lr-decay", "4", "--eval-every", "300"],
}
RNNKIT_SETTINGS["mikolov_me"] = RNNKIT_SETTINGS["mikolov"] + DIRECT
_VALID_RNNLM = re.compile(r"VALID entropy: ([0-9.]+)")
_WORDS_RNNLM = re.compile(r"Words/sec: ([0-9.]+)")
_VALID_RNNKIT = re.compile(r"valid loss [0-9.]+, ppl ([0-9.]+)")


def build_rnnlm(folder: Path) -> Path:
    """The toolkit compiled from its source in ``folder`` (as its SOURCE.md says)."""
    source = folder / "rnnlm"
    shutil.copytree(PEER, source)
    subprocess.run(["make", "CC=g++", "CFLAGS=-std=gnu++98 -D WEIGHTTYPE=float -O2 "
                    "-funroll-loops -ffast-math"], cwd=source, check=True,
                   capture_output=True)
    return source / "rnnlm"


def _timed_run(command: list[str], budget_s: float, parse, env: dict, cwd: Path) -> dict:
    """Run ``command`` until it ends or ``budget_s`` passes; every line of its output that
    ``parse`` maps to ("valid", ppl) or ("speed", words/s) is kept with its time."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env, cwd=cwd)
    timer = threading.Timer(budget_s, process.terminate)
    timer.start()
    points, speeds = [], []
    buffer = b""
    while chunk := process.stdout.read1(4096):
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for line in lines:
            for kind, value in parse(line.decode("utf-8", "replace")):
                (points if kind == "valid" else speeds).append(
                    (round(time.monotonic() - started, 1), value))
    process.wait()
    timer.cancel()
    return {"valid": points, "words_per_s": speeds[-1][1] if speeds else None,
            "wall_s": round(time.monotonic() - started, 1), "stopped_by_budget":
            process.returncode not in (0, None) and time.monotonic() - started >= budget_s}


def _parse_rnnlm(line: str):
    if m := _VALID_RNNLM.search(line):
        yield "valid", 2 ** float(m.group(1))
    if m := _WORDS_RNNLM.search(line):
        yield "speed", float(m.group(1))


def _parse_rnnkit(line: str):
    if m := _VALID_RNNKIT.search(line):
        yield "valid", float(m.group(1))


def run_toolkit(binary: Path, name: str, budget_s: float, folder: Path) -> dict:
    """The toolkit (``rnnme``: with direct connections) trained for at most ``budget_s``,
    then its saved model (after its last finished iteration) on the test split."""
    model = folder / f"{name}.model"
    extra = ["-direct", "1000", "-direct-order", "3"] if name == "rnnme" else []
    result = _timed_run([str(binary), "-train", str(PTB / "ptb.train.txt"), "-valid",
                         str(PTB / "ptb.valid.txt"), "-rnnlm", str(model), *RNNLM_SETTINGS,
                         *extra], budget_s, _parse_rnnlm, dict(os.environ), folder)
    result["test"] = None
    if model.is_file():
        done = subprocess.run([str(binary), "-rnnlm", str(model), "-test",
                               str(PTB / "ptb.test.txt")], capture_output=True, text=True,
                              cwd=folder)
        if m := re.search(r"PPL net: ([0-9.]+)", done.stdout):
            result["test"] = float(m.group(1))
    return result


def run_rnnkit(name: str, budget_s: float, folder: Path) -> dict:
    """rnnkit's ``name`` settings for ``budget_s`` (its --max-minutes), then ``rnnkit eval``
    of the kept model on the test split; words/s from its metrics."""
    out = folder / name
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = _timed_run([sys.executable, "-m", "rnnkit", "train", "lm", "--data", str(PTB),
                         "--level", "word", *RNNKIT_SETTINGS[name], "--max-minutes",
                         str(budget_s / 60), "--sample", "0", "--no-progress", "--out",
                         str(out)], budget_s + 600, _parse_rnnkit, env, folder)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").is_file() else []
    rates = [r["tok_per_s"] for r in records if r.get("tok_per_s")]
    result["words_per_s"] = sorted(rates)[len(rates) // 2] if rates else None
    result["epochs"] = epoch_ends(records)
    done = subprocess.run([sys.executable, "-m", "rnnkit", "eval", str(out), "--data",
                           str(PTB / "ptb.test.txt"), "--batch-size", "1", "--json"],
                          capture_output=True, text=True, env=env)
    result["test"] = json.loads(done.stdout)["ppl"] if done.returncode == 0 else None
    return result


def epoch_ends(records: list[dict]) -> list[float]:
    """rnnkit's validation perplexity after each whole epoch, from its metrics.jsonl: an
    epoch ends every S steps (stream batches: the same number each epoch), S being the
    step of the last validation of epoch 0 once epoch 1 has begun."""
    valid = [r for r in records if r["split"] == "valid"]
    begun = [r["step"] for r in records if r["epoch"] >= 1]
    if not begun:
        return []
    S = max(r["step"] for r in valid if r["epoch"] == 0 and r["step"] <= min(begun))
    by_step = {r["step"]: r["ppl"] for r in valid if r["step"] % S == 0}   # the last at a step
    return [by_step[k] for k in sorted(by_step)]


def at_budget(points: list, budget_s: float) -> float | None:
    """The last validation perplexity reported within ``budget_s``."""
    seen = [ppl for t, ppl in points if t <= budget_s]
    return seen[-1] if seen else None


def print_epochs(runs: dict, toolkit: str, rnnkit: str) -> None:
    """Validation perplexity after each epoch of the same model in both, and the ratio."""
    a = [ppl for _, ppl in runs[toolkit]["valid"]]      # the toolkit validates once an epoch
    b = runs[rnnkit]["epochs"]
    print(f"\nafter each epoch: {toolkit} against {rnnkit} (ratio: rnnkit / toolkit)")
    for k in range(max(len(a), len(b))):
        x = a[k] if k < len(a) else None
        y = b[k] if k < len(b) else None
        ratio = f"{y / x:.3f}" if x and y else "-"
        print(f"epoch {k + 1:>2} " + "".join("        -" if v is None else f"{v:9.1f}"
                                             for v in (x, y)) + f"{ratio:>8}")
    runs[rnnkit]["ratio_by_epoch"] = [b[k] / a[k] for k in range(min(len(a), len(b)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("systems", nargs="*", help=f"of {', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--budgets", default="1,5,15,30",
                        help="wall-time budgets in minutes; the largest is each run's length")
    parser.add_argument("--parallel", type=int, default=1,
                        help="systems run at once, one thread each (2 cores: at most 2)")
    parser.add_argument("--results", default="rnnlm_toolkit",
                        help="name of the JSON file written to benchmarks/results/")
    args = parser.parse_args(argv)
    systems = args.systems or list(SYSTEMS)
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    budgets = [float(b) for b in args.budgets.split(",")]
    longest = max(budgets) * 60
    results: dict = {"budgets_min": budgets, "systems": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        binary = build_rnnlm(folder) if {"rnnlm", "rnnme"} & set(systems) else None

        def one(name: str) -> None:
            run = run_toolkit if name in ("rnnlm", "rnnme") else None
            results["systems"][name] = (run(binary, name, longest, folder) if run else
                                        run_rnnkit(name, longest, folder))

        for k in range(0, len(systems), args.parallel):
            threads = [threading.Thread(target=one, args=(name,))
                       for name in systems[k:k + args.parallel]]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    print("validation perplexity at each budget (minutes), words/s, test perplexity:")
    print("system    " + "".join(f"{b:>9g}" for b in budgets) + "   words/s     test")
    for name in systems:
        r = results["systems"][name]
        cells = [at_budget(r["valid"], b * 60) for b in budgets]
        r["at_budgets"] = dict(zip(map(str, budgets), cells))
        speed = "-" if r["words_per_s"] is None else f"{r['words_per_s']:.0f}"
        test = "-" if r["test"] is None else f"{r['test']:.1f}"
        print(f"{name:<11}" + "".join("        -" if c is None else f"{c:9.1f}"
                                      for c in cells) + f"{speed:>10} {test:>8}")
    for toolkit, rnnkit in PAIRS:
        if toolkit in systems and rnnkit in systems:
            print_epochs(results["systems"], toolkit, rnnkit)
    write_results(args.results, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
