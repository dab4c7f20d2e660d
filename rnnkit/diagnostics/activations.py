"""Activation pictures: which hidden units of a character model track what in the text.

The "interpretable cells" analysis of Karpathy, Johnson & Fei-Fei (2015): run a trained
character model over a text, colour every character by one unit's activation, and look for
units that follow simple features — the position in the line, being inside quotes or
brackets. :func:`feature_correlations` ranks the units by correlation with such features;
:func:`activation_html` writes a self-contained page (inline CSS, no scripts or external
assets, works offline).
"""

from __future__ import annotations

import html
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.bptt import OBSERVERS
from rnnkit.diagnostics.gradient_flow import hand_bptt

MAX_CHARS = 20_000          # longest text a page shows; longer texts are cut, and said so
KINDS = ("hidden", "cell", "input", "forget", "output", "reset", "update")


def activations(model, ids: list[int], *, layer: int = -1, kind: str = "hidden") -> Tensor:
    """Activations (T, H) of one layer of a :class:`~rnnkit.models.lm.LanguageModel`.

    ``kind``: "hidden" (the layer's output h_t), "cell" (an LSTM's c_t), or a gate name of
    the layer's cell ("input", "forget", "output" for an LSTM; "reset", "update" for a GRU).
    Each row is the state after reading that token.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
    L = len(model.layers)
    if not -L <= layer < L:
        raise ValueError(f"layer: the model has {L} layer(s) (0..{L - 1}), got {layer}")
    layer %= L
    tokens = torch.tensor(ids, dtype=torch.long,
                          device=model.embedding.weight.device)[:, None]     # (T, 1)
    captured: list[tuple] = []

    def factory(cell, batch_sizes, reverse, caches):
        captured.append((cell, caches))
        return None

    model.eval()
    with hand_bptt(model), torch.no_grad():
        token = OBSERVERS.set(factory)
        try:
            x = model.embedding(tokens)
            for k in range(layer + 1):
                x, _ = model.layers[k](x)
        finally:
            OBSERVERS.reset(token)
    cell, caches = captured[layer]
    if kind == "hidden":
        return x[:, 0]
    values = [{**cell.state_activations(c), **cell.gate_activations(c)} for c in caches]
    if kind not in values[0]:
        what = "cell state" if kind == "cell" else f"{kind!r} gate"
        raise ValueError(f"kind: a {model.config.cell} layer has no {what}; it has "
                         f"{sorted(values[0])}")
    return torch.cat([v[kind] for v in values])


def text_features(text: str) -> dict[str, Tensor]:
    """Per-character features (T,): position in the line, inside quotes, inside brackets."""
    position, quotes, brackets = [], [], []
    column, quote, depth = 0, None, 0
    for ch in text:
        if quote is None and ch in "\"'":
            quote = ch
        elif ch == quote:
            quote = None
        if quote is None:
            if ch in "([{":
                depth += 1
            elif ch in ")]}" and depth:
                depth -= 1
        position.append(column)
        quotes.append(1.0 if quote is not None else 0.0)
        brackets.append(1.0 if depth else 0.0)
        column = 0 if ch == "\n" else column + 1
    return {"position in line": torch.tensor(position, dtype=torch.float64),
            "inside quotes": torch.tensor(quotes, dtype=torch.float64),
            "inside brackets": torch.tensor(brackets, dtype=torch.float64)}


def feature_correlations(text: str, acts: Tensor, top: int = 3) -> dict[str, list[tuple[int, float]]]:
    """For each feature, the ``top`` units (index, Pearson r) most correlated with it."""
    a = acts.detach().double().cpu()           # the features are CPU tensors
    a = a - a.mean(0)
    result = {}
    for name, f in text_features(text).items():
        f = f - f.mean()
        denominator = a.norm(dim=0) * f.norm()
        r = torch.where(denominator > 0, (a * f[:, None]).sum(0) / denominator,
                        torch.zeros_like(denominator))
        order = r.abs().argsort(descending=True)[:top]
        result[name] = [(int(u), float(r[u])) for u in order]
    return result


def colour(value: float, scale: float) -> str:
    """Blue for negative, white for 0, red for positive."""
    v = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    fade = int(round(255 * (1 - abs(v))))
    return f"rgb(255,{fade},{fade})" if v >= 0 else f"rgb({fade},{fade},255)"


def activation_html(text: str, values: Tensor, *, title: str,
                    correlations: dict[str, list[tuple[int, float]]] | None = None,
                    note: str = "") -> str:
    """A self-contained HTML page: each character on the colour of its value (T,)."""
    if len(text) != values.shape[0]:
        raise ValueError(f"values: expected one per character ({len(text)}), got "
                         f"{values.shape[0]}")
    scale = float(values.abs().max()) if values.numel() else 0.0
    spans = []
    for ch, v in zip(text, values.tolist()):
        shown = "↵\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="background:{colour(v, scale)}" '
                     f'title="{v:.3f}">{shown}</span>')
    table = ""
    if correlations:
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>"
            + ", ".join(f"unit {u} (r = {r:+.2f})" for u, r in units) + "</td></tr>"
            for name, units in correlations.items())
        table = ("<h2>Units most correlated with simple features</h2><table>"
                 "<tr><th>feature</th><th>units</th></tr>" + rows + "</table>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
pre {{ font-family: monospace; font-size: 14px; line-height: 1.35; white-space: pre-wrap; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
.note {{ color: #a00; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Background: <span style="background:rgb(0,0,255);color:white">&nbsp;−{scale:.2f}&nbsp;</span>
… white 0 … <span style="background:rgb(255,0,0);color:white">&nbsp;+{scale:.2f}&nbsp;</span>;
hover a character for its value.</p>
{f'<p class="note">{html.escape(note)}</p>' if note else ''}
<pre>{''.join(spans)}</pre>
{table}
</body></html>
"""


def activation_input(tokenizer, text: str, max_chars: int = MAX_CHARS
                     ) -> tuple[str, list[int], str]:
    """(the text shown, its ids, a note) for an activation view: a character model only
    (else ValueError naming the model's level), the text cut at ``max_chars`` (and the
    note says so), at least one character."""
    if tokenizer.level != "char":
        raise ValueError(f"model: activation views need a character model, this one is "
                         f"{tokenizer.level}-level")
    note = ""
    if len(text) > max_chars:
        note = (f"The text has {len(text):,} characters; the view shows the first "
                f"{max_chars:,} (the limit).")
        text = text[:max_chars]
    if not text:
        raise ValueError("text: expected at least one character")
    return text, tokenizer.encode(text, unknown_policy="unk"), note


def write_activation_page(model, tokenizer, text: str, path, *, unit: int, layer: int = -1,
                          kind: str = "hidden", max_chars: int = MAX_CHARS) -> dict:
    """Compute, rank and draw: writes the page to ``path``; returns what it showed."""
    text, ids, note = activation_input(tokenizer, text, max_chars)
    acts = activations(model, ids, layer=layer, kind=kind)
    if not 0 <= unit < acts.shape[1]:
        raise ValueError(f"unit: expected 0..{acts.shape[1] - 1} ({acts.shape[1]} units), "
                         f"got {unit}")
    correlations = feature_correlations(text, acts)
    page = activation_html(text, acts[:, unit], correlations=correlations, note=note,
                           title=f"{kind} unit {unit} of layer {layer % len(model.layers)}")
    from rnnkit.checkpoint import atomic_write
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return {"chars": len(text), "truncated": bool(note), "note": note,
            "correlations": correlations, "page": str(path),
            "range": [float(acts[:, unit].min()), float(acts[:, unit].max())]}


__all__ = ["activations", "text_features", "feature_correlations", "activation_html",
           "activation_input", "write_activation_page", "colour", "MAX_CHARS", "KINDS"]
