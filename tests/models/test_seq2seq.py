"""The attentional encoder-decoder: padding, attention scores by hand, teacher forcing against
the step-by-step search, greedy decoding against beam search, beam search against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rnnkit.generate import beam_search
from rnnkit.models.seq2seq import (BOS_ID, EOS_ID, Attention, Seq2Seq, Seq2SeqConfig,
                                   TranslationSearch, greedy_translate)
from rnnkit.tasks.common import pad

SOURCES = [[3, 4, 5, 2], [6, 7, 2], [3, 8, 9, 10, 4, 2]]          # lengths 4, 3, 6
TARGETS = [[2, 5, 6], [2, 7, 8, 9, 10], [2, 3]]                    # <eos> first: lengths 3, 5, 2

each_decoder = pytest.mark.parametrize(("cell", "attention", "input_feeding"), [
    (cell, attention, feed) for cell in ("gru", "lstm")
    for attention in ("additive", "multiplicative") for feed in (False, True)])


def make_model(cell="gru", attention="additive", input_feeding=False, *, layers=1,
               source_vocab=11, target_vocab=13, dtype=torch.float32, **options):
    """A tiny model in eval mode (dropout configured, so eval mode must switch it off)."""
    cfg = Seq2SeqConfig(source_vocab, target_vocab, cell=cell, embedding_size=5, hidden_size=6,
                        encoder_layers=layers, decoder_layers=layers, attention=attention,
                        input_feeding=input_feeding, dropout=0.3, **options)
    return Seq2Seq(cfg).to(dtype).eval()


def one(ids):
    """An id list as a batch of one: (T, 1) and its length (1,)."""
    return torch.tensor(ids)[:, None], torch.tensor([len(ids)])


# ---- padding -------------------------------------------------------------------------------

@each_decoder
def test_padding_never_changes_real_tokens(cell, attention, input_feeding):
    model = make_model(cell, attention, input_feeding, layers=2)
    src, src_len = pad(SOURCES)
    tgt, _ = pad(TARGETS)
    with torch.no_grad():
        memory, mask, state = model.encode(src, src_len)
        logits, weights, _, _ = model.decode(tgt, memory, mask, state)
        for b, (s, t) in enumerate(zip(SOURCES, TARGETS)):
            alone_memory, alone_mask, alone_state = model.encode(*one(s))
            alone, alone_weights, _, _ = model.decode(one(t)[0], alone_memory, alone_mask,
                                                      alone_state)
            torch.testing.assert_close(logits[:len(t), b], alone[:, 0], rtol=0, atol=1e-5)
            torch.testing.assert_close(weights[:len(t), b, :len(s)], alone_weights[:, 0],
                                       rtol=0, atol=1e-6)
            # the forward pass is encode + decode
            torch.testing.assert_close(model(*one(s), one(t)[0])[:, 0], alone[:, 0],
                                       rtol=0, atol=0)


@each_decoder
def test_attention_is_zero_on_source_padding_and_rows_sum_to_one(cell, attention,
                                                                 input_feeding):
    model = make_model(cell, attention, input_feeding)
    src, src_len = pad(SOURCES)
    tgt, _ = pad(TARGETS)
    with torch.no_grad():
        memory, mask, state = model.encode(src, src_len)
        _, weights, _, _ = model.decode(tgt, memory, mask, state)          # (T, B, S)
    assert mask.t().tolist() == [[j < n for j in range(src.shape[0])] for n in (4, 3, 6)]
    padding = ~mask.t()[None].expand_as(weights)
    assert (weights[padding] == 0).all()                                  # exactly 0
    assert (weights[~padding] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


# ---- attention scores by hand --------------------------------------------------------------

def _hand_attention(att: Attention, query, memory, lengths):
    """Per (t, b, j) scores from the module's weights, softmax over the real j, contexts."""
    T, B, _ = query.shape
    S = memory.shape[0]
    weights = torch.zeros(T, B, S, dtype=query.dtype)
    context = torch.zeros(T, B, memory.shape[2], dtype=query.dtype)
    for t in range(T):
        for b in range(B):
            scores = []
            for j in range(int(lengths[b])):
                s, m = query[t, b], memory[j, b]
                if att.kind == "additive":
                    hidden = torch.tanh(att.query.weight @ s + att.query.bias + att.key.weight @ m)
                    scores.append(att.v.weight[0] @ hidden)
                else:
                    scores.append(s @ (att.key.weight @ m))
            alpha = torch.softmax(torch.stack(scores), 0)
            weights[t, b, :len(scores)] = alpha
            context[t, b] = (alpha[:, None] * memory[:len(scores), b]).sum(0)
    return context, weights


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_attention_scores_match_hand_computation(kind):
    att = Attention(kind, 4, 6).double()
    query, memory = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(5, 2, 6,
                                                                           dtype=torch.float64)
    lengths = torch.tensor([5, 2])
    mask = torch.arange(5)[:, None] < lengths[None]
    context, weights = att(query, att.keys(memory), memory, mask)
    hand_context, hand_weights = _hand_attention(att, query, memory, lengths)
    torch.testing.assert_close(weights, hand_weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(context, hand_context, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, scores", [
    ("multiplicative", [1.0, 0.0]),                      # s · (I m)
    ("additive", [math.tanh(1.0), 0.0]),                 # 1 · tanh(0 s + I m)
])
def test_attention_golden_numbers(kind, scores):
    """Constant weights, known weights and contexts; the third source position is padding."""
    att = Attention(kind, 2, 2).double()
    with torch.no_grad():
        att.key.weight.copy_(torch.eye(2))
        if kind == "additive":
            att.query.weight.zero_()
            att.query.bias.zero_()
            att.v.weight.fill_(1.0)
    query = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)            # (1, 1, 2)
    memory = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[5.0, 5.0]]], dtype=torch.float64)
    mask = torch.tensor([[True], [True], [False]])
    context, weights = att(query, att.keys(memory), memory, mask)
    e = torch.tensor(scores, dtype=torch.float64).exp()
    expected = torch.cat([e / e.sum(), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(weights[0, 0], expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(context[0, 0], torch.stack([expected[0], torch.tensor(
        0.0, dtype=torch.float64)]), rtol=0, atol=1e-15)


def test_attentional_vector_and_logits_follow_the_equations():
    """ã_t = tanh(W_c [c_t; s_t]), logits = W_o ã_t + b, with s_t the decoder's output."""
    model = make_model("gru", "multiplicative", dtype=torch.float64)
    src, src_len = one(SOURCES[2])
    tgt = one(TARGETS[1])[0]
    with torch.no_grad():
        memory, mask, state = model.encode(src, src_len)
        logits, weights, _, feed = model.decode(tgt, memory, mask, state)
        s, _ = model.decoder(model.target_embedding(tgt), state)           # (T, 1, H)
        context = torch.einsum("tbs,sbm->tbm", weights, memory)
        attn = torch.tanh(torch.cat([context, s], -1) @ model.combine.weight.t())
    torch.testing.assert_close(logits, attn @ model.output.weight.t() + model.output.bias,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(feed, attn[-1], rtol=0, atol=1e-12)


def test_bridge_sets_the_decoder_state_from_both_final_encoder_states():
    model = make_model("lstm", layers=2, dtype=torch.float64)
    src, src_len = pad(SOURCES)
    with torch.no_grad():
        memory, _, (h0, c0) = model.encode(src, src_len)
        H = model.config.hidden_size
        for b, s in enumerate(SOURCES):
            n = len(s)
            forward_last, backward_first = memory[n - 1, b, :H], memory[0, b, H:]
            expected = torch.tanh(model.bridge(torch.cat([forward_last, backward_first])))
            for layer in range(2):
                torch.testing.assert_close(h0[layer, b], expected, rtol=0, atol=1e-12)
            assert (memory[n:, b] == 0).all()
    assert (c0 == 0).all()


# ---- teacher forcing against the search's steps ---------------------------------------------

@each_decoder
def test_teacher_forced_logits_equal_step_by_step_search_log_probs(cell, attention,
                                                                   input_feeding):
    model = make_model(cell, attention, input_feeding, layers=2)
    source, target = SOURCES[2], [BOS_ID, 5, 6, 7, 8]
    with torch.no_grad():
        logits, weights, _, _ = model.decode(one(target)[0], *model.encode(*one(source)))
        logits = logits[:, 0]                                               # (T, V)
    search = TranslationSearch(model, source)
    state = search.initial_state(1)
    for t, token in enumerate(target):
        log_probs, state = search.step(torch.tensor([token]), state)
        torch.testing.assert_close(log_probs[0], torch.log_softmax(logits[t], -1), rtol=0,
                                   atol=1e-5)
        torch.testing.assert_close(search.weights[0, 0], weights[t, 0], rtol=0, atol=1e-6)
    # prime runs the same steps in one call
    primed, _ = search.prime(one(target)[0], search.initial_state(1))
    torch.testing.assert_close(primed[0], torch.log_softmax(logits[-1], -1), rtol=0, atol=1e-5)


# ---- greedy and beam search ----------------------------------------------------------------

def _eos_sometimes(model, shift):
    with torch.no_grad():
        model.output.bias[EOS_ID] += shift
    return model


@pytest.mark.parametrize("input_feeding", [False, True])
def test_greedy_translate_equals_beam_search_with_beam_one(input_feeding):
    sources = SOURCES + [[5, 5, 5, 5, 5, 5, 5, 2], [10, 2]]
    lengths_seen = set()
    for seed, shift in ((0, 0.0), (1, 2.0), (2, 4.0)):
        torch.manual_seed(seed)
        model = _eos_sometimes(make_model("gru", "additive", input_feeding), shift)
        src, lengths = pad(sources)
        ids, weights = greedy_translate(model, src, lengths, max_len=12)
        assert weights.shape[1:] == (len(sources), src.shape[0])
        for source, row in zip(sources, ids):
            (best, _), = beam_search(TranslationSearch(model, source), [BOS_ID], beam_size=1,
                                     max_tokens=12, eos_id=EOS_ID)
            assert row == (best[:-1] if best[-1] == EOS_ID else best)
            lengths_seen.add(len(row) < 12)
    assert lengths_seen == {True, False}      # some ended at <eos>, some were cut at max_len


def _score(model, source, tokens, length_penalty=1.0):
    """sum log p(y_t | y_<t, x) / n ** length_penalty, recomputed by teacher forcing."""
    inputs = [BOS_ID] + tokens[:-1]
    with torch.no_grad():
        lp = torch.log_softmax(model(*one(source), one(inputs)[0])[:, 0].double(), -1)
    return float(lp[torch.arange(len(tokens)), tokens].sum()) / len(tokens) ** length_penalty


@pytest.mark.parametrize("seed", range(4))
def test_wider_beam_never_scores_below_greedy(seed):
    torch.manual_seed(seed)
    model = _eos_sometimes(make_model("lstm", "multiplicative", True), 1.0)
    for source in SOURCES:
        greedy, = beam_search(TranslationSearch(model, source), [BOS_ID], beam_size=1,
                              max_tokens=10, eos_id=EOS_ID)
        wide = beam_search(TranslationSearch(model, source), [BOS_ID], beam_size=4,
                           max_tokens=10, eos_id=EOS_ID)
        for tokens, score in [greedy, *wide]:             # the reported scores are the real ones
            assert score == pytest.approx(_score(model, source, tokens), abs=1e-5)
        assert [s for _, s in wide] == sorted((s for _, s in wide), reverse=True)
        assert wide[0][1] >= greedy[1] - 1e-9


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_exhaustive_beam_finds_the_brute_force_best(length_penalty):
    """With a beam of V ** n every hypothesis of up to n tokens survives: the search's best is
    the best of all sequences scored one by one (hypotheses reordered on every step)."""
    torch.manual_seed(3)
    V, n = 4, 3
    model = _eos_sometimes(make_model("gru", "additive", True, target_vocab=V), 0.5)
    source = SOURCES[0]
    candidates = [list(seq) for k in range(1, n + 1)
                  for seq in itertools.product(range(V), repeat=k)
                  if EOS_ID not in seq[:-1] and (seq[-1] == EOS_ID or k == n)]
    scores = {tuple(c): _score(model, source, c, length_penalty) for c in candidates}
    found = beam_search(TranslationSearch(model, source), [BOS_ID], beam_size=V ** n,
                        max_tokens=n, eos_id=EOS_ID, length_penalty=length_penalty)
    assert sorted(tuple(t) for t, _ in found) == sorted(scores)
    for tokens, score in found:
        assert score == pytest.approx(scores[tuple(tokens)], abs=1e-5)
    assert found[0][1] == pytest.approx(max(scores.values()), abs=1e-5)


# ---- configuration -------------------------------------------------------------------------

def test_tied_embeddings_share_one_matrix():
    model = Seq2Seq(Seq2SeqConfig(7, 9, embedding_size=6, hidden_size=6, tie_embeddings=True))
    assert model.output.weight is model.target_embedding.weight


@pytest.mark.parametrize("options, fragment", [
    ({"attention": "dot"}, "attention"),
    ({"cell": "transformer"}, "cell"),
    ({"target_vocab_size": 2}, "target_vocab_size"),
    ({"dropout": 1.0}, "dropout"),
    ({"tie_embeddings": True, "embedding_size": 4, "hidden_size": 6}, "tie_embeddings"),
])
def test_config_rejects_bad_fields(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        Seq2SeqConfig(**{"source_vocab_size": 7, "target_vocab_size": 9, **options})
