"""The classic language-model uses on PTB word: n-gram interpolation, dynamic evaluation and
n-best rescoring, with a trained rnnkit model and a KenLM n-gram built by a real tool.

1. ``ngram``: builds a modified Kneser-Ney n-gram model of PTB train with KenLM's ``lmplz``
   (``--lmplz PATH``; build it from github.com/kpu/kenlm with cmake and boost) unless
   ``--arpa`` names one, then test perplexity of the n-gram alone, rnnkit alone and the two
   interpolated, the weight λ chosen on the validation split.
2. ``dynamic``: test perplexity with dynamic evaluation, its rate chosen on validation
   (one stream, ``--batch-size 1``), and without.
3. ``nbest``: n-best lists made from PTB sentences — the true sentence among distorted ones
   (a substituted word, a deleted word, two words swapped), each with a simulated
   recogniser's score (minus its edits, plus noise) and the n-gram's score — and the 1-best
   accuracy and WER of the recogniser alone, with the n-gram, with rnnkit and with both
   (weights tuned on lists made from the validation split).

    python benchmarks/lm_classics.py [ngram] [dynamic] [nbest] --model runs/bench-ptb_1thread

Writes ``benchmarks/results/lm_classics.json``. The model is one trained by
``benchmarks/lm_quality.py ptb`` (2 x 200 LSTM); selection is on validation, test is
reported once.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _common import DATA, write_results  # noqa: E402
from rnnkit.tasks import lm, rescore  # noqa: E402

PTB = DATA / "ptb"
WEIGHTS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
RATES = (0.3, 0.5, 1.0, 2.0)


def build_arpa(lmplz: str, order: int, folder: Path) -> Path:
    """A modified Kneser-Ney model of PTB train by KenLM's lmplz. PTB writes rare words as
    the word ``<unk>``, which lmplz refuses in a corpus: it is counted under a stand-in name,
    and the ARPA file's own (never seen) ``<unk>`` entry is replaced by the stand-in's, so
    that the n-gram's ``<unk>`` carries PTB's ``<unk>`` counts, as rnnkit's does."""
    stand_in = "<ptb-unk>"
    text = (PTB / "ptb.train.txt").read_text().replace("<unk>", stand_in)
    done = subprocess.run([lmplz, "-o", str(order), "--discount_fallback", "-S", "20%"],
                          input=text.encode(), capture_output=True, check=True)
    lines = done.stdout.decode().splitlines()
    own = [k for k, line in enumerate(lines) if line.split("\t")[1:2] == ["<unk>"]]
    del lines[own[0]]
    lines = [line.replace(stand_in, "<unk>") for line in lines]
    lines = [f"ngram 1={int(line.split('=')[1]) - 1}" if line.startswith("ngram 1=") else line
             for line in lines]
    arpa = folder / f"ptb.{order}gram.arpa"
    arpa.write_text("\n".join(lines) + "\n")
    return arpa


def bench_ngram(model: Path, arpa: Path) -> dict:
    valid, test = PTB / "ptb.valid.txt", PTB / "ptb.test.txt"
    tuned = {w: lm.evaluate_file(model, valid, ngram=arpa, ngram_weight=w)["ppl"]
             for w in WEIGHTS}
    best = min(tuned, key=tuned.get)
    m = lm.evaluate_file(model, test, ngram=arpa, ngram_weight=best)
    return {"arpa": str(arpa), "valid_by_weight": tuned, "weight": best,
            "test": {"ngram": m["ngram"]["ngram_ppl"], "rnnkit": m["ngram"]["rnnkit_ppl"],
                     "interpolated": m["ppl"]}}


def bench_dynamic(model: Path) -> dict:
    valid, test = PTB / "ptb.valid.txt", PTB / "ptb.test.txt"
    tuned = {r: lm.evaluate_file(model, valid, batch_size=1, dynamic=r)["ppl"] for r in RATES}
    best = min(tuned, key=tuned.get)
    return {"valid_by_rate": tuned, "rate": best,
            "test": {"static": lm.evaluate_file(model, test, batch_size=1)["ppl"],
                     "dynamic": lm.evaluate_file(model, test, batch_size=1,
                                                 dynamic=best)["ppl"]}}


def _distorted(words: list[str], vocab: list[str], rng: random.Random) -> list[str]:
    w = list(words)
    kind = rng.choice(("substitute", "delete", "swap"))
    k = rng.randrange(len(w))
    if kind == "substitute":
        w[k] = rng.choice(vocab)
    elif kind == "delete" and len(w) > 1:
        del w[k]
    elif len(w) > 1:
        k = min(k, len(w) - 2)
        w[k], w[k + 1] = w[k + 1], w[k]
    return w


def make_nbest(split: str, n: int, size: int, arpa: Path, folder: Path, seed: int,
               noise: float):
    """An n-best TSV of ``n`` sentences of ``split`` (``size`` distinct hypotheses each, the
    true one among them) and its references. A hypothesis' own score plays a recogniser's:
    minus its number of edits, plus Gaussian noise of deviation ``noise`` (log10 units);
    its lm_score is the n-gram's log10 probability."""
    import kenlm

    model = kenlm.Model(str(arpa))
    sentences = [s.split() for s in (PTB / f"ptb.{split}.txt").read_text().splitlines()
                 if 4 <= len(s.split()) <= 30][:n]
    vocab = sorted({w for s in sentences for w in s})
    rng = random.Random(seed)
    rows, refs = [], []
    for k, words in enumerate(sentences):
        hyps = {" ".join(words): 0}
        while len(hyps) < size:
            hyps.setdefault(" ".join(_distorted(words, vocab, rng)), 1)
        order = sorted(hyps)
        rng.shuffle(order)
        rows += [f"s{k}\t{-hyps[h] + rng.gauss(0, noise):.4f}\t"
                 f"{model.score(h, bos=True, eos=True):.4f}\t{h}" for h in order]
        refs.append(f"s{k} {' '.join(words)}")
    nbest, ref = folder / f"{split}.nbest.tsv", folder / f"{split}.ref.txt"
    nbest.write_text("\n".join(rows) + "\n")
    ref.write_text("\n".join(refs) + "\n")
    return nbest, ref


def _figures(lists, refs, lm_weight, rnn_weight, path) -> dict:
    best = rescore.one_best(lists, lm_weight, rnn_weight)
    exact = sum(refs[key] == text for key, text in best) / len(best)
    return {"lm_weight": lm_weight, "rnn_weight": rnn_weight, "one_best_accuracy": exact,
            "wer": rescore.word_error_rate(best, refs, path)}


def bench_nbest(model: Path, arpa: Path, folder: Path, n: int, size: int,
                noise: float) -> dict:
    """The recogniser's score alone, with the n-gram, with rnnkit, with both: each one's
    weights chosen on lists made from the validation split."""
    dev, dev_ref = make_nbest("valid", n, size, arpa, folder, 1, noise)
    test, test_ref = make_nbest("test", n, size, arpa, folder, 2, noise)
    dev_lists = rescore.score_nbest(model, rescore.read_nbest(dev))
    dev_refs = rescore.read_references(dev_ref)
    lists = rescore.score_nbest(model, rescore.read_nbest(test))
    refs = rescore.read_references(test_ref)
    out = {"sentences": n, "hypotheses": size, "noise": noise,
           "recogniser_alone": _figures(lists, refs, 0.0, 1.0, test_ref)}
    for name, grid in (("with_ngram", (0.0,)), ("with_rnnkit", (1.0,)),
                       ("with_both", rescore.RNN_WEIGHTS)):
        tuned = rescore.tune(dev_lists, dev_refs, dev_ref, rnn_weights=grid)
        out[name] = _figures(lists, refs, tuned["lm_weight"], tuned["rnn_weight"], test_ref)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="*", help="ngram | dynamic | nbest (default: all)")
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "bench-ptb_1thread")
    parser.add_argument("--arpa", type=Path, help="an n-gram model of PTB train (else built)")
    parser.add_argument("--lmplz", default="lmplz", help="KenLM's lmplz (to build one)")
    parser.add_argument("--order", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--hypotheses", type=int, default=10)
    parser.add_argument("--noise", type=float, default=1.0,
                        help="deviation of the simulated recogniser's score noise (log10)")
    args = parser.parse_args(argv)
    which = args.which or ["ngram", "dynamic", "nbest"]
    out = ROOT / "benchmarks" / "results" / "lm_classics.json"
    results = json.loads(out.read_text()) if out.is_file() else {}     # parts run apart
    results["model"] = str(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        arpa = args.arpa
        if arpa is None and {"ngram", "nbest"} & set(which):
            arpa = build_arpa(args.lmplz, args.order, Path(tmp))
            print(f"built a {args.order}-gram of PTB train with {args.lmplz}")
        if "ngram" in which:
            r = results["ngram"] = bench_ngram(args.model, arpa)
            t = r["test"]
            print(f"PTB test ppl: {args.order}-gram {t['ngram']:.2f}, rnnkit {t['rnnkit']:.2f}, "
                  f"interpolated (λ={r['weight']} on valid) {t['interpolated']:.2f}")
        if "dynamic" in which:
            r = results["dynamic"] = bench_dynamic(args.model)
            print(f"PTB test ppl (one stream): static {r['test']['static']:.2f}, dynamic "
                  f"(rate {r['rate']} on valid) {r['test']['dynamic']:.2f}")
        if "nbest" in which:
            r = results["nbest"] = bench_nbest(args.model, arpa, Path(tmp), args.sentences,
                                               args.hypotheses, args.noise)
            for name in ("recogniser_alone", "with_ngram", "with_rnnkit", "with_both"):
                f = r[name]
                print(f"n-best ({r['sentences']} x {r['hypotheses']}) {name}: 1-best "
                      f"{100 * f['one_best_accuracy']:.1f}%, WER {100 * f['wer']:.2f}% "
                      f"(--lm-weight {f['lm_weight']:g} --rnn-weight {f['rnn_weight']:g})")
    write_results("lm_classics", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
