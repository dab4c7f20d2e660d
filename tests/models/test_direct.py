"""Maximum-entropy direct connections (RNNME): the hashed features against a brute-force
hashing in plain Python ints, every head against a hand computation, streams read in
windows against whole, padded batches against lines alone, and training end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.models.direct import CLASSES, WORDS
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.tasks import lm
from rnnkit.train import TrainConfig
from conftest import train_losses

V, M = 31, 997
COUNTS = [int(500 / (i + 1)) + 1 for i in range(V)]
HEADS = {"full": {}, "class": {"num_classes": 4}, "adaptive": {"adaptive_cutoffs": (8, 20)}}

# The hash, restated in Python ints (unbounded: the modulus keeps it exact) from the
# documented definition, independently of the tensor code.
P = 2 ** 31 - 1
POSITION = (1_000_003, 998_244_353, 1_234_567_891, 1_610_612_741)
GROUP = 1_500_450_271


def brute_indices(history: list[int], order: int, group: int, unit: int, size: int) -> list[int]:
    """Table indices of one unit's features given the inputs so far (oldest first; missing
    words are -1)."""
    padded = [-1] * order + history
    out = []
    for k in range(order):
        h = k + 1
        for j in range(k):
            h = (h * POSITION[j] + padded[len(padded) - 1 - j] + 2) % P
        base = (h * GROUP + group + 1) % P % size
        out.append((base + unit) % size)
    return out


def _model(softmax="full", order=3, size=M, seed=0, dtype=torch.float64, **extra):
    torch.manual_seed(seed)
    cfg = LMConfig(vocab_size=V, cell="gru", hidden_size=16, num_layers=1, softmax=softmax,
                   direct_size=size, direct_order=order, **HEADS[softmax], **extra)
    model = LanguageModel(cfg, counts=COUNTS).to(dtype).eval()
    with torch.no_grad():
        model.direct.weight.normal_()
    return model


def _head_logits(model, hidden):
    """The network's own logits (N, V) of a full head, no direct connections."""
    return F.linear(hidden, model.head.weight, model.head.bias)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_full_softmax_equals_brute_force_hashing(order):
    model = _model("full", order)
    tokens = torch.randint(0, V, (9, 2))
    hidden, _ = model(tokens)
    log_probs = model.log_probs(hidden)                                  # (T, B, V)
    table = model.direct.weight
    for b in range(2):
        for t in range(9):
            history = tokens[:t + 1, b].tolist()
            extra = torch.stack([table[brute_indices(history, order, WORDS, w, M)].sum()
                                 for w in range(V)])
            expected = F.log_softmax(_head_logits(model, hidden.hidden[t, b]) + extra, -1)
            torch.testing.assert_close(log_probs[t, b], expected)


def test_class_softmax_equals_brute_force_hashing():
    model = _model("class")
    head, table = model.head, model.direct.weight
    tokens = torch.randint(0, V, (6, 2))
    targets = torch.randint(0, V, (6, 2))
    hidden, _ = model(tokens)
    nll = model.nll(hidden, targets)
    for b in range(2):
        for t in range(6):
            history, h = tokens[:t + 1, b].tolist(), hidden.hidden[t, b]
            direct = lambda group, unit: table[brute_indices(history, 3, group, unit, M)].sum()
            class_logits = h @ head.class_weight.T + head.class_bias + torch.stack(
                [direct(CLASSES, c) for c in range(head.num_classes)])
            w = targets[t, b].item()
            c = head.class_of[w].item()
            words = (head.class_of == c).nonzero().squeeze(1)
            word_logits = h @ head.weight[words].T + head.bias[words] + torch.stack(
                [direct(WORDS, u) for u in words.tolist()])
            expected = -(F.log_softmax(class_logits, -1)[c]
                         + F.log_softmax(word_logits, -1)[(words == w).nonzero().item()])
            torch.testing.assert_close(nll[t, b], expected)


def test_adaptive_softmax_equals_brute_force_hashing():
    model = _model("adaptive")
    inner, table = model.head.inner, model.direct.weight
    tokens = torch.randint(0, V, (5, 2))
    hidden, _ = model(tokens)
    log_probs = model.log_probs(hidden)
    for b in range(2):
        for t in range(5):
            history, h = tokens[:t + 1, b].tolist(), hidden.hidden[t, b]
            direct = lambda group, unit: table[brute_indices(history, 3, group, unit, M)].sum()
            head = inner.head(h) + torch.stack([direct(WORDS, u) for u in range(8)]
                                               + [direct(CLASSES, i) for i in range(2)])
            head_lp = F.log_softmax(head, -1)
            expected = [head_lp[:8]]
            for i, (lo, hi) in enumerate([(8, 20), (20, V)]):
                tail = inner.tail[i](h) + torch.stack([direct(WORDS, u) for u in range(lo, hi)])
                expected.append(F.log_softmax(tail, -1) + head_lp[8 + i])
            torch.testing.assert_close(log_probs[t, b], torch.cat(expected))


@pytest.mark.parametrize("softmax", list(HEADS))
def test_nll_and_log_probs_agree_and_normalise(softmax):
    model = _model(softmax)
    tokens, targets = torch.randint(0, V, (7, 3)), torch.randint(0, V, (7, 3))
    hidden, _ = model(tokens)
    log_probs = model.log_probs(hidden)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(7, 3, dtype=torch.float64))
    torch.testing.assert_close(model.nll(hidden, targets),
                               -log_probs.gather(-1, targets[..., None]).squeeze(-1))


@pytest.mark.parametrize("softmax", list(HEADS))
def test_a_zero_table_is_the_network_alone(softmax):
    with_direct = _model(softmax)
    with torch.no_grad():
        with_direct.direct.weight.zero_()
    torch.manual_seed(0)
    plain = LanguageModel(LMConfig(**{**with_direct.config.to_dict(), "direct_size": 0,
                                      "adaptive_cutoffs": with_direct.config.adaptive_cutoffs}),
                          counts=COUNTS).double().eval()
    plain.load_state_dict({k: v for k, v in with_direct.state_dict().items()
                           if not k.startswith("direct.")})
    tokens, targets = torch.randint(0, V, (6, 2)), torch.randint(0, V, (6, 2))
    a, _ = with_direct(tokens)
    b, _ = plain(tokens)
    torch.testing.assert_close(with_direct.nll(a, targets), plain.nll(b, targets))
    torch.testing.assert_close(with_direct.log_probs(a), plain.log_probs(b))


def test_windows_with_the_carried_state_equal_the_stream_read_whole():
    model = _model("class", order=4)
    tokens, targets = torch.randint(0, V, (12, 3)), torch.randint(0, V, (12, 3))
    whole, _ = model(tokens)
    state, parts = None, []
    for t in range(0, 12, 5):                         # windows of 5, 5, 2
        hidden, state = model(tokens[t:t + 5], state)
        parts.append(model.nll(hidden, targets[t:t + 5]))
    torch.testing.assert_close(torch.cat(parts), model.nll(whole, targets))
    assert state[-1].tolist() == tokens[-3:].tolist()             # the last K-1 inputs


def test_step_equals_forward():
    model = _model("adaptive")
    tokens = torch.randint(0, V, (5, 2))
    hidden, _ = model(tokens)
    state = model.initial_state(2)
    for t in range(5):
        log_probs, state = model.step(tokens[t], state)
        torch.testing.assert_close(log_probs, model.log_probs(hidden[t]))


def test_a_padded_batch_equals_each_line_alone():
    model = _model("full")
    lines = [torch.randint(0, V, (n,)) for n in (6, 2, 4)]
    lengths = torch.tensor([6, 2, 4])
    batch = torch.zeros(6, 3, dtype=torch.long)
    for b, line in enumerate(lines):
        batch[:len(line), b] = line
    hidden, state = model(batch, None, lengths=lengths)
    log_probs = model.log_probs(hidden)
    for b, line in enumerate(lines):
        alone, alone_state = model(line[:, None])
        torch.testing.assert_close(log_probs[:len(line), b], model.log_probs(alone)[:, 0])
        assert state[-1][:, b].tolist() == alone_state[-1][:, 0].tolist()


def test_gradient_of_the_table_matches_finite_differences():
    model = _model("class", size=53)
    tokens, targets = torch.randint(0, V, (4, 2)), torch.randint(0, V, (4, 2))
    hidden, _ = model(tokens)
    features = hidden.hidden.detach()
    weight = model.direct.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w: _nll_with_table(model, w, features, hidden.hashes, targets), (weight,))


def _nll_with_table(model, weight, features, hashes, targets):
    """The model's NLL sum with its table replaced by ``weight`` (for gradcheck)."""
    from rnnkit.models.direct import DirectHidden
    original = model.direct.weight
    del model.direct.weight
    model.direct.weight = weight
    try:
        return model.nll(DirectHidden(features, hashes), targets).sum()
    finally:
        del model.direct.weight
        model.direct.weight = original


def test_options_are_checked():
    base = {"vocab_size": V, "hidden_size": 4}
    with pytest.raises(ValueError, match="direct_order: only with direct connections"):
        LMConfig(**base, direct_order=4)
    with pytest.raises(ValueError, match=r"direct_order: expected an int in \[2, 9\]"):
        LMConfig(**base, direct_size=10, direct_order=1)
    with pytest.raises(ValueError, match="direct_size: expected an int >= 0"):
        LMConfig(**base, direct_size=-1)


# -- end to end ---------------------------------------------------------------------------

# A sequence only a trigram predicts: after "a b" comes c or d, alternating with the word
# before "a" (x → c, y → d).
TRIGRAM_TEXT = "\n".join(["x a b c", "y a b d"] * 60) + "\n"


def _train(corpus, out, model, **train):
    data = lm.LMDataConfig(data=str(corpus), level="word", batch_size=4, bptt=6)
    cfg = TrainConfig(**{"epochs": 3, "lr": 0.02, "optimizer": "adam", "log_every": 2,
                         "progress": False, **train})
    return lm.train_lm(data, model, cfg, out, log=lambda *_: None)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TRIGRAM_TEXT, encoding="utf-8")
    return path


def test_direct_connections_learn_what_a_tiny_network_cannot(corpus, tmp_path):
    tiny = {"cell": "rnn_tanh", "hidden_size": 1, "num_layers": 1}
    alone = _train(corpus, tmp_path / "alone", tiny)
    rnnme = _train(corpus, tmp_path / "rnnme", {**tiny, "direct_size": 4096,
                                                "direct_order": 4})
    assert rnnme["valid"]["loss"] < 0.6 * alone["valid"]["loss"]
    model, _, _ = lm.load_lm(tmp_path / "rnnme")
    assert model.direct.weight.abs().sum() > 0                    # saved and loaded


def test_resume_is_bit_exact_with_the_history_carried(corpus, tmp_path):
    model = {"cell": "lstm", "hidden_size": 8, "num_layers": 1, "direct_size": 1000,
             "softmax": "class"}
    _train(corpus, tmp_path / "a", model, max_steps=24)
    _train(corpus, tmp_path / "b", model, max_steps=10)
    lm.train_lm(None, None, None, tmp_path / "b", resume=True,
                train_overrides={"max_steps": 24}, log=lambda *_: None)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert a == b and a[-1][0] == 24


def test_scores_files_and_refuses_export(corpus, tmp_path):
    from rnnkit.export import export_model
    out = tmp_path / "m"
    _train(corpus, out, {"cell": "gru", "hidden_size": 8, "num_layers": 1,
                         "direct_size": 512}, max_steps=6)
    rows = lm.score_lines(out, corpus)
    model, tok, _ = lm.load_lm(out)
    ids = tok.encode_line("x a b c")                     # ends with <eos>
    assert ids[-1] == tok.line_end_id
    total = 0.0
    log_probs, state = model.step(torch.tensor([tok.line_end_id]), model.initial_state(1))
    for i in ids:                                        # token by token, from <eos>
        total += log_probs[0, i].item()
        log_probs, state = model.step(torch.tensor([i]), state)
    assert rows[0]["logprob"] == pytest.approx(total, abs=1e-4)
    with pytest.raises(ValueError, match="direct connections .* cannot be exported"):
        export_model(out, tmp_path / "onnx")


def test_int8_keeps_the_direct_connections_in_float():
    from rnnkit.quantize import quantize_lm
    model = _model("full", dtype=torch.float32)
    int8, description = quantize_lm(model)
    assert "output layer int8" in description
    tokens = torch.randint(0, V, (6, 2))
    a, _ = model(tokens)
    b, _ = int8(tokens)
    exact, approx = model.log_probs(a), int8.log_probs(b)
    assert not torch.equal(exact, approx)                        # the products are int8 …
    torch.testing.assert_close(approx, exact, atol=0.05, rtol=0)  # … the table is not
    torch.testing.assert_close(int8.direct.weight, model.direct.weight)


def test_an_out_of_range_target_is_an_error_with_the_adaptive_head():
    model = _model("adaptive")
    hidden, _ = model(torch.randint(0, V, (2, 1)))
    with pytest.raises(IndexError, match=rf"targets: expected ids in \[0, {V}\)"):
        model.nll(hidden, torch.tensor([[V + 5], [1]]))


@pytest.mark.parametrize("args, fragment", [
    (["--direct-order", "4"], "--direct-order (direct_order): only with direct connections"),
    (["--direct-size", "10", "--direct-order", "1"], "--direct-order (direct_order): expected an int in [2, 9]"),
    (["--direct-size", "-1"], "--direct-size (direct_size): expected an int >= 0"),
    (["--lr-schedule", "plateau", "--min-improvement", "0.01"],
     "--min-improvement (min_improvement): only for lr_schedule='halving'"),
])
def test_bad_options_are_refused_before_the_data_is_read(tmp_path, capsys, args, fragment):
    from conftest import expect_cli_error
    expect_cli_error(["train", "lm", "--data", tmp_path / "missing.txt", "--out",
                      tmp_path / "run", *args], capsys, fragment)
    assert not (tmp_path / "run").exists()
