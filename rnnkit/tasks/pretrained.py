"""A supervised model's encoder started from a trained language model (Dai & Le 2015,
"Semi-supervised sequence learning"): ``rnnkit train classifier|tagger --init-from LM_DIR``.

:func:`init_encoder` copies, into a :class:`~rnnkit.models.encoder.RecurrentEncoder`:

- the embedding row of every word the two vocabularies share (matched by its string;
  ``<unk>`` to ``<unk>``; ``<pad>`` stays zero); the other words keep their initialisation;
- the recurrent layers, layer by layer, into the encoder's forward direction: every
  parameter of the language model's layer k (input and recurrent weights, biases, a
  layer-normalised cell's gains …) into the encoder's layer k. Where the encoder's input is
  wider (a tagger's character features beside the word vector; a bidirectional layer's
  backward half) only the language model's columns are copied; a backward direction and
  layers beyond the language model's keep their initialisation.

The cell (and its options), the embedding size and the hidden size must agree; the
language model must be word-level. What was copied and what was not is reported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rnnkit.special import PAD_ID

SPECIALS = ("<pad>", "<unk>", "<eos>")


def check_language_model(directory: str | Path) -> None:
    """Refuse at once (before any data is read) a directory that is not a language model."""
    from rnnkit import checkpoint

    config = checkpoint.read_config(directory)
    if config.get("task") != "lm":
        raise ValueError(f"--init-from: {directory} is a {config.get('task')!r} model, not a "
                         f"language model")


def _mismatch(directory, what: str, lm_value, value) -> ValueError:
    return ValueError(f"--init-from: {directory} has {what} {lm_value!r}, this model "
                      f"{value!r}; train the language model with the same {what}")


def init_encoder(encoder, tokenizer, directory: str | Path, log=print) -> dict:
    """Copy a trained language model's embedding and recurrent layers into ``encoder``
    (see the module docstring); ``tokenizer`` is the encoder's word vocabulary. Returns
    {"words": shared words copied, "vocabulary": the encoder's words, "layers": copied}."""
    from rnnkit.tasks.lm import load_lm

    if tokenizer.level != "word":
        raise ValueError(f"--init-from: this model reads {tokenizer.level} tokens; a language "
                         f"model's vectors are matched to words (use --level word)")
    lm_model, lm_tok, _ = load_lm(directory)
    if lm_tok.level != "word":
        raise ValueError(f"--init-from: {directory} is a {lm_tok.level}-level language "
                         f"model; the encoder reads words")
    rnn, first = encoder.rnn, lm_model.layers[0]
    for what, lm_value, value in (
            ("cell", (first.cell_name, first.cell_options), (rnn.cell_name, rnn.cell_options)),
            ("embedding size", lm_model.embedding.weight.shape[1],
             encoder.embedding.weight.shape[1]),
            ("hidden size", first.hidden_size, rnn.hidden_size)):
        if lm_value != value:
            raise _mismatch(directory, what, lm_value, value)
    lookup = {lm_tok.token(i): i for i in range(lm_tok.vocab_size)}
    specials = {i for i in range(tokenizer.vocab_size) if tokenizer.token(i) in SPECIALS}
    shared = 0
    with torch.no_grad():
        for i in range(tokenizer.vocab_size):
            j = lookup.get(tokenizer.token(i))
            if i != PAD_ID and j is not None:
                encoder.embedding.weight[i] = lm_model.embedding.weight[j]
                shared += i not in specials
        layers = min(len(lm_model.layers), rnn.num_layers)
        params = dict(rnn.named_parameters())
        for k in range(layers):
            for name, value in lm_model.layers[k].named_parameters():
                target = params[name.removesuffix("_l0") + f"_l{k}"]
                index = tuple(slice(0, n) for n in value.shape)     # the LM's own columns
                target[index] = value
    words = tokenizer.vocab_size - len(specials)
    kept = ["the backward direction"] if rnn.bidirectional else []
    if rnn.num_layers > layers:
        kept.append(f"layers {layers + 1}..{rnn.num_layers}")
    log(f"--init-from {directory}: {shared:,} of {words:,} words took its vectors "
        f"({words - shared:,} unknown to it kept their initialisation); recurrent layers "
        f"1..{layers} from it" + (f"; {' and '.join(kept)} kept their initialisation"
                                  if kept else ""))
    return {"words": shared, "vocabulary": words, "layers": layers}
