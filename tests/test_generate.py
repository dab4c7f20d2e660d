"""Generation against hand-made step models whose distributions are known exactly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rnnkit.generate import (beam_search, filter_logits, generate_text, reorder_state,
                             sample_tokens)


class MarkovModel:
    """First order: P(next = j | last = i) = table[i, j]; the state is the last token (1, B, 1)."""

    def __init__(self, table):
        self.log_table = torch.tensor(table, dtype=torch.float64).log()   # (V, V)
        self.calls: list[tuple[str, list]] = []

    def initial_state(self, batch_size):
        return torch.full((1, batch_size, 1), -1, dtype=torch.long)

    def prime(self, tokens, state):                                    # tokens (T, B)
        self.calls.append(("prime", tokens.tolist()))
        return self.log_table[tokens[-1]], tokens[-1].view(1, -1, 1)

    def step(self, tokens, state):                                     # tokens (B,)
        self.calls.append(("step", tokens.tolist()))
        return self.log_table[tokens], tokens.view(1, -1, 1)


class PairModel:
    """Second order: P(next | previous, last) = table[previous, last]; nested tuple state.

    The state ``(previous (1, B, 1), (last (1, B, 1),))`` matters: with rows mixed up by a
    wrong reorder, the distributions would be those of other hypotheses.
    """

    def __init__(self, table):
        self.log_table = torch.tensor(table, dtype=torch.float64).log()   # (V, V, V)
        self.step_sizes: list[int] = []

    def initial_state(self, batch_size):
        zeros = torch.zeros(1, batch_size, 1, dtype=torch.long)
        return zeros, (zeros.clone(),)

    def prime(self, tokens, state):
        previous, last = tokens[-2], tokens[-1]                        # (B,) each
        return self.log_table[previous, last], (previous.view(1, -1, 1), (last.view(1, -1, 1),))

    def step(self, tokens, state):
        self.step_sizes.append(len(tokens))
        last = state[1][0].view(-1)
        return self.log_table[last, tokens], (last.view(1, -1, 1), (tokens.view(1, -1, 1),))


class ScriptedModel:
    """Puts probability 0.9 on script[n] after n generated tokens; the state holds n."""

    def __init__(self, script, vocab_size):
        self.script, self.V = script, vocab_size
        self.steps = 0

    def initial_state(self, batch_size):
        return torch.zeros(1, batch_size, 1, dtype=torch.long)

    def _log_probs(self, n):
        probs = torch.full((1, self.V), 0.1 / (self.V - 1), dtype=torch.float64)
        probs[0, self.script[n]] = 0.9
        return probs.log()

    def prime(self, tokens, state):
        return self._log_probs(0), torch.zeros(1, 1, 1, dtype=torch.long)

    def step(self, tokens, state):
        self.steps += 1
        n = int(state) + 1
        return self._log_probs(n), torch.full((1, 1, 1), n)


class ListTokenizer:
    """Each id is one entry of ``vocab`` (a character or a longer string); prompts are chars."""

    def __init__(self, vocab, eos_id=None):
        self.vocab, self.eos_id = vocab, eos_id

    def encode(self, text):
        return [self.vocab.index(ch) for ch in text]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


class ByteTokenizer:
    """Ids are UTF-8 bytes, so one character may take several tokens."""

    eos_id = None

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


TABLE = [[0.10, 0.20, 0.60, 0.10],        # argmax path from 0: 2, 1, 3, 2, 1, 3, ...
         [0.25, 0.05, 0.30, 0.40],
         [0.20, 0.45, 0.14, 0.21],
         [0.30, 0.10, 0.35, 0.25]]
ROW = torch.tensor([[0.15, 0.05, 0.5, 0.3]], dtype=torch.float64)       # sorted: 2, 3, 0, 1


def random_table(shape, seed):
    g = torch.Generator().manual_seed(seed)
    table = torch.rand(shape, generator=g, dtype=torch.float64) + 0.05
    return (table / table.sum(-1, keepdim=True)).tolist()


# ---- filter_logits -------------------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    ({}, [0.15, 0.05, 0.5, 0.3]),
    ({"top_k": 2}, [0, 0, 0.5 / 0.8, 0.3 / 0.8]),
    ({"top_k": 3}, [0.15 / 0.95, 0, 0.5 / 0.95, 0.3 / 0.95]),
    ({"top_k": 10}, [0.15, 0.05, 0.5, 0.3]),
    ({"top_p": 0.8}, [0, 0, 0.5 / 0.8, 0.3 / 0.8]),               # 0.5 + 0.3 reaches 0.8
    ({"top_p": 0.81}, [0.15 / 0.95, 0, 0.5 / 0.95, 0.3 / 0.95]),
    ({"top_p": 0.2}, [0, 0, 1, 0]),
    ({"top_p": 1e-9}, [0, 0, 1, 0]),                               # the top token, always
    ({"top_p": 1.0}, [0.15, 0.05, 0.5, 0.3]),
    ({"top_k": 3, "top_p": 0.8}, [0, 0, 0.5 / 0.8, 0.3 / 0.8]),
])
def test_filter_logits_gives_exact_renormalised_probabilities(options, expected):
    probs = filter_logits(ROW.log(), **options).exp()
    torch.testing.assert_close(probs, torch.tensor([expected], dtype=torch.float64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_p_reached_exactly_adds_no_token_despite_rounding(dtype):
    log_probs = torch.tensor([[0.1, 0.7, 0.2]], dtype=dtype).log()   # exp(log) is not exact
    assert filter_logits(log_probs, top_p=0.7).exp().tolist() == [[0, 1, 0]]
    kept = filter_logits(log_probs, top_p=0.9).exp()
    torch.testing.assert_close(kept, torch.tensor([[0, 0.7 / 0.9, 0.2 / 0.9]], dtype=dtype))


def test_filter_logits_temperature_then_top_k_then_top_p():
    p = ROW[0]
    warm = p ** 0.5 / (p ** 0.5).sum()                     # T = 2: [.204, .118, .416, .322]
    torch.testing.assert_close(filter_logits(ROW.log(), temperature=2.0).exp()[0], warm,
                               rtol=0, atol=1e-12)
    # T = 2, top_k = 3 drops token 1; top_p = 0.7 then needs tokens 2 and 3 (0.56 + 0.43).
    kept = warm * torch.tensor([1, 0, 1, 1])
    kept = kept / kept.sum()
    assert kept[2] < 0.7 < kept[2] + kept[3]
    nucleus = torch.tensor([0, 0, kept[2], kept[3]]) / (kept[2] + kept[3])
    got = filter_logits(ROW.log(), temperature=2.0, top_k=3, top_p=0.7).exp()[0]
    torch.testing.assert_close(got, nucleus.double(), rtol=0, atol=1e-12)
    cold = p ** 4 / (p ** 4).sum()
    torch.testing.assert_close(filter_logits(ROW.log(), temperature=0.25).exp()[0], cold,
                               rtol=0, atol=1e-12)


def test_filter_logits_filters_each_row_of_a_batch_alone():
    rows = torch.tensor(TABLE, dtype=torch.float64)                  # (4, 4)
    probs = filter_logits(rows.log(), top_k=1).exp()
    assert probs.tolist() == torch.eye(4, dtype=torch.float64)[[2, 3, 1, 2]].tolist()
    probs = filter_logits(rows.log(), top_p=0.5).exp()
    expected = [[0, 0, 1, 0], [0, 0, 0.3 / 0.7, 0.4 / 0.7], [0, 0.45 / 0.66, 0, 0.21 / 0.66],
                [0.3 / 0.65, 0, 0.35 / 0.65, 0]]
    torch.testing.assert_close(probs, torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_filter_logits_keeps_impossible_tokens_impossible():
    log_probs = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    got = filter_logits(log_probs, temperature=0.5, top_k=2, top_p=0.9)
    assert got.tolist() == [[0.0, float("-inf"), float("-inf")]]


# ---- sample_tokens -------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"temperature": 1.5, "top_k": 3, "top_p": 0.7}])
def test_sampled_transitions_match_the_filtered_distribution(options):
    model = MarkovModel(TABLE)
    tokens = [0, *sample_tokens(model, [0], max_tokens=10_000, seed=1, **options)]
    counts = torch.zeros(4, 4, dtype=torch.float64)
    for last, token in zip(tokens, tokens[1:]):
        counts[last, token] += 1
    n = counts.sum(1, keepdim=True)                                # about 2500 draws per row
    frequencies = counts / n
    expected = filter_logits(torch.tensor(TABLE, dtype=torch.float64).log(), **options).exp()
    if options:                     # top_k drops one token in each row, top_p one more
        assert (expected == 0).sum(1).tolist() == [2, 2, 2, 2]
    # Each frequency within 4.5 standard errors (0.045 at most; tokens filtered out:
    # exactly 0); a wrong temperature or filter is off by 0.04 to 0.3.
    assert ((frequencies - expected).abs() <= 4.5 * (expected * (1 - expected) / n).sqrt()).all()


def test_greedy_follows_the_argmax_path():
    tokens = list(sample_tokens(MarkovModel(TABLE), [3, 0], max_tokens=7, greedy=True))
    assert tokens == [2, 1, 3, 2, 1, 3, 2]


def test_prime_is_one_call_and_tokens_stream_one_step_at_a_time():
    model = MarkovModel(TABLE)
    stream = sample_tokens(model, [1, 3, 0], max_tokens=3, greedy=True)
    assert model.calls == []                                       # nothing runs until next()
    assert next(stream) == 2
    assert model.calls == [("prime", [[1], [3], [0]])]
    assert next(stream) == 1
    assert model.calls[1:] == [("step", [2])]
    assert list(stream) == [3]
    assert model.calls[2:] == [("step", [1])]                      # no step after the last token


def test_same_seed_same_tokens_different_seed_different_tokens():
    def run(**kwargs):
        return list(sample_tokens(MarkovModel(TABLE), [0], max_tokens=60, **kwargs))

    assert run(seed=7) == run(seed=7)
    assert run(seed=7) != run(seed=8)
    assert run(seed=7) == run(generator=torch.Generator().manual_seed(7))
    torch.manual_seed(3)
    first = run()
    torch.manual_seed(3)
    assert run() == first                                          # no seed: torch's global RNG


def test_stop_ids_end_generation_after_the_stop_token():
    assert list(sample_tokens(MarkovModel(TABLE), [0], max_tokens=50, greedy=True,
                              stop_ids=[3])) == [2, 1, 3]
    for seed in range(5):
        tokens = list(sample_tokens(MarkovModel(TABLE), [0], max_tokens=200, seed=seed,
                                    stop_ids={0, 1}))
        assert tokens[-1] in {0, 1} and not {0, 1} & set(tokens[:-1])


def test_max_tokens_zero_yields_nothing_and_calls_nothing():
    model = MarkovModel(TABLE)
    assert list(sample_tokens(model, [0], max_tokens=0)) == []
    assert model.calls == []


# ---- beam_search ---------------------------------------------------------------------------

EOS = 3


def brute_force(table, prime, max_tokens, length_penalty):
    """Every finished continuation (ends in EOS, or has max_tokens tokens), best first."""
    log_table = torch.tensor(table, dtype=torch.float64).log()
    V = log_table.shape[0]
    hypotheses = []
    for n in range(1, max_tokens + 1):
        for seq in itertools.product(range(V), repeat=n):
            if EOS in seq[:-1] or (n < max_tokens and seq[-1] != EOS):
                continue
            context = [*prime, *seq]
            total = sum(float(log_table[context[i - 2], context[i - 1], context[i]])
                        for i in range(len(prime), len(context)))
            hypotheses.append((list(seq), total / n ** length_penalty))
    return sorted(hypotheses, key=lambda hyp: hyp[1], reverse=True)


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_exhaustive_beam_equals_brute_force_enumeration(length_penalty):
    table = random_table((4, 4, 4), seed=0)
    model = PairModel(table)
    got = beam_search(model, [1, 2], beam_size=4 ** 4, max_tokens=4, eos_id=EOS,
                      length_penalty=length_penalty)
    expected = brute_force(table, [1, 2], 4, length_penalty)
    assert len(got) == len(expected) == 1 + 3 + 9 + 27 + 81
    assert [seq for seq, _ in got] == [seq for seq, _ in expected]
    for (_, score), (_, reference) in zip(got, expected):
        assert score == pytest.approx(reference, rel=1e-12)
    assert model.step_sizes == [3, 9, 27]                          # one batched step per time step


def test_beam_of_one_equals_greedy():
    table = random_table((4, 4, 4), seed=1)
    for prime in ([0, 0], [1, 2], [3, 1]):
        greedy = list(sample_tokens(PairModel(table), prime, max_tokens=6, greedy=True,
                                    stop_ids=[EOS]))
        [(seq, score)] = beam_search(PairModel(table), prime, beam_size=1, max_tokens=6,
                                     eos_id=EOS)
        assert seq == greedy
        log_table = torch.tensor(table, dtype=torch.float64).log()
        context = [*prime, *seq]
        total = sum(float(log_table[context[i - 2], context[i - 1], context[i]])
                    for i in range(2, len(context)))
        assert score == pytest.approx(total / len(seq), rel=1e-12)


def test_a_beam_of_two_finds_what_greedy_misses():
    table = [[0.05, 0.50, 0.40, 0.05],      # greedy takes 1 (0.5), then 0: 0.16
             [0.32, 0.30, 0.28, 0.10],
             [0.02, 0.02, 0.02, 0.94],      # 2 then EOS: 0.4 * 0.94 = 0.376
             [0.25, 0.25, 0.25, 0.25]]
    assert beam_search(MarkovModel(table), [0], beam_size=1, max_tokens=2, eos_id=EOS,
                       length_penalty=0)[0][0] == [1, 0]
    best, score = beam_search(MarkovModel(table), [0], beam_size=2, max_tokens=2, eos_id=EOS,
                              length_penalty=0)[0]
    assert best == [2, 3] and score == pytest.approx(math.log(0.376), rel=1e-12)


def test_beam_never_proposes_impossible_tokens():
    table = [[0.0, 0.6, 0.4, 0.0], [0.6, 0.0, 0.0, 0.4], [0.0, 0.0, 0.0, 1.0], TABLE[3]]
    got = beam_search(MarkovModel(table), [0], beam_size=4, max_tokens=2, eos_id=EOS)
    assert [seq for seq, _ in got] == [[2, 3], [1, 0], [1, 3]]     # 3 possible, of 16
    assert [score for _, score in got] == pytest.approx(
        [math.log(0.4) / 2, math.log(0.36) / 2, math.log(0.24) / 2], rel=1e-12)


def test_reorder_state_selects_batch_rows_in_tensors_and_nested_tuples():
    h = torch.arange(12.0).view(2, 3, 2)                           # (L, B, H)
    state = (h, (h + 100, [h[:1] * -1]))
    index = torch.tensor([2, 0, 0])
    got = reorder_state(state, index)
    assert got[0].tolist() == [[[4, 5], [0, 1], [0, 1]], [[10, 11], [6, 7], [6, 7]]]
    assert got[1][0].tolist() == (got[0] + 100).tolist()
    assert isinstance(got[1][1], list) and got[1][1][0].tolist() == [[[-4, -5], [0, -1], [0, -1]]]
    assert reorder_state(h, index).tolist() == got[0].tolist()


# ---- generate_text -------------------------------------------------------------------------

VOCAB = ["h", "e", "l", "o", " ", "w", "r", "d", "lo w", "orld", "<eos>"]


def generate(script, stop=(), prime="h", eos_id=None, max_tokens=20):
    model = ScriptedModel([VOCAB.index(piece) for piece in script], len(VOCAB))
    pieces = []
    text = generate_text(model, ListTokenizer(VOCAB, eos_id), prime, max_tokens=max_tokens,
                         stop=stop, on_text=pieces.append, greedy=True)
    assert "".join(pieces) == text
    return text, pieces, model


HELLO = list("ello world")


def test_streamed_pieces_join_to_the_returned_continuation():
    text, pieces, _ = generate(HELLO, max_tokens=10)
    assert text == "ello world" and pieces == list("ello world")


def test_stop_string_cuts_the_text_and_is_never_streamed():
    assert generate(HELLO, stop="wor")[:2] == ("ello ", list("ello "))
    # "o" and "o " wait as possible starts of "o w"; the cut comes before it.
    assert generate(HELLO, stop=("ld", "o w"))[:2] == ("ell", list("ell"))
    assert generate(HELLO, stop=["x", "rld"])[:2] == ("ello wo", list("ello wo"))


def test_stop_string_inside_one_multi_character_token():
    text, pieces, _ = generate(["e", "l", "lo w", "orld"], stop=" w")
    assert text == "ello" and pieces == ["e", "l", "lo"]
    text, pieces, _ = generate(["e", "l", "lo w", "orld"], stop="rl")
    assert text == "ello wo" and pieces == ["e", "l", "lo w", "o"]


def test_stop_string_in_the_prompt_is_ignored():
    text, _, _ = generate(list(" world"), prime="hello", stop="ll", max_tokens=6)
    assert text == " world"


def test_eos_ends_the_text_without_appearing_in_it():
    text, pieces, model = generate([*"ello", "<eos>", *" world"], eos_id=VOCAB.index("<eos>"))
    assert text == "ello" and pieces == list("ello")
    assert model.steps == 4                                        # nothing after EOS


def test_multibyte_characters_stream_whole():
    script = list("café!".encode())[1:]
    model = ScriptedModel(script, 256)
    pieces = []
    text = generate_text(model, ByteTokenizer(), "c", max_tokens=len(script),
                         on_text=pieces.append, greedy=True)
    assert text == "afé!" and pieces == ["a", "f", "é", "!"]


def test_generate_text_same_seed_same_text():
    def run(seed):
        return generate_text(MarkovModel(TABLE), ListTokenizer(list("abcd")), "a",
                             max_tokens=40, seed=seed, top_k=3)

    assert run(5) == run(5) != run(6)
    assert len(run(5)) == 40 and set(run(5)) <= set("abcd")


# ---- invalid options -----------------------------------------------------------------------

@pytest.mark.parametrize("options, name", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"top_k": 2.0}, "top_k"), ({"top_k": True}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"top_p": -0.5}, "top_p"),
])
def test_invalid_sampling_options_name_the_option(options, name):
    with pytest.raises(ValueError, match=f"^{name}: expected .*got"):
        filter_logits(ROW.log(), **options)
    with pytest.raises(ValueError, match=f"^{name}: "):
        sample_tokens(MarkovModel(TABLE), [0], max_tokens=3, **options)   # raised before next()


def test_invalid_generation_arguments_name_the_argument():
    model = MarkovModel(TABLE)
    cases = [
        (lambda: sample_tokens(model, [], max_tokens=3), "prime: expected at least one token"),
        (lambda: sample_tokens(model, [0], max_tokens=-1), "max_tokens: expected an int >= 0"),
        (lambda: sample_tokens(model, [0], max_tokens=2.5), "max_tokens: "),
        (lambda: sample_tokens(model, [0], max_tokens=3, seed=1,
                               generator=torch.Generator()), "seed: "),
        (lambda: filter_logits(ROW.log()[0]), "log_probs: expected a 2-D tensor"),
        (lambda: beam_search(model, [0], beam_size=0, max_tokens=3), "beam_size: "),
        (lambda: beam_search(model, [0], max_tokens=0), "max_tokens: expected an int >= 1"),
        (lambda: beam_search(model, [0], max_tokens=3, length_penalty=-1), "length_penalty: "),
        (lambda: beam_search(model, [], max_tokens=3), "prime: "),
        (lambda: generate_text(model, ListTokenizer(list("abcd")), "a", max_tokens=3,
                               stop=["b", ""]), "stop: expected non-empty strings"),
        (lambda: generate_text(model, ListTokenizer(list("abcd")), "", max_tokens=3), "prime: "),
        (lambda: reorder_state({"h": ROW}, torch.tensor([0])), "state: "),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match="^" + message):
            call()
    assert model.calls == []


@pytest.mark.parametrize("temperature", [1e-320, 1e-40, 1e-6])
def test_a_vanishing_temperature_samples_the_likeliest_token(temperature):
    """Dividing by a temperature below float32's range must not make NaN probabilities:
    the distribution becomes the argmax (ties share it)."""
    from rnnkit.generate import filter_logits

    log_probs = torch.log_softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(3)),
                                  -1)
    kept = filter_logits(log_probs, temperature=temperature).exp()
    assert torch.isfinite(kept).all()
    torch.testing.assert_close(kept.sum(-1), torch.ones(4))
    assert (kept.argmax(-1) == log_probs.argmax(-1)).all()
    assert (kept.max(-1).values > 0.999).all()
