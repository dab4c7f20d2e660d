"""Does the condition steer the sentence? Sample sentences from a conditioned language
model for each label and let an independently trained classifier read them.

    python benchmarks/conditioned_generation.py --lm runs/sst2-lm --classifier runs/bench-sst2/seed1

(``runs/sst2-lm``: ``rnnkit train conditioned-lm --data ../shared/data/sst2 --min-count 2
--hidden 256 --epochs 6 --out runs/sst2-lm``; the classifier from ``benchmarks/sst2.py``.)
Prints, per condition, the share of samples the classifier gives that label, and a few
samples; writes benchmarks/results/conditioned_generation.json.
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import write_results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", required=True, help="conditioned language-model directory")
    parser.add_argument("--classifier", required=True, help="classifier directory")
    parser.add_argument("--samples", type=int, default=200, help="sentences per label")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rnnkit.tasks import classifier, conditioned_lm

    from rnnkit.tasks.lm import generate_from

    lm, lm_tokenizer, lm_config = conditioned_lm.load_conditioned_lm(args.lm)
    net, tokenizer, cls_config = classifier.load_classifier(args.classifier)
    results = {"temperature": args.temperature, "samples": args.samples, "labels": {}}
    for label in lm_config["labels"]:
        model = lm.conditioned_on(conditioned_lm.parse_condition(label, lm_config))
        texts = [generate_from(model, lm_tokenizer, max_tokens=60, stop=("\n",),
                               temperature=args.temperature, seed=k)
                 for k in range(args.samples)]
        ids = [tokenizer.encode_words(t.split()) or [1] for t in texts]
        probs = classifier.class_probabilities(net, ids, "cpu")
        predicted = [cls_config["labels"][int(k)] for k in probs.argmax(1)]
        agree = sum(p == label for p in predicted) / len(texts)
        results["labels"][label] = {"classified_as_condition": agree, "examples": texts[:5]}
        print(f"condition {label}: {100 * agree:.1f}% of {len(texts)} samples classified as "
              f"{label}")
        for t in texts[:3]:
            print(f"    {t}")
    write_results("conditioned_generation", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
