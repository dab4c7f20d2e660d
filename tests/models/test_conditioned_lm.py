"""A language model conditioned on a label or a vector: the condition's way into the network
by hand, forward against step, errors, and the model under rnnkit.generate."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnnkit.generate import beam_search, sample_tokens
from rnnkit.models.lm import ConditionedModel, LanguageModel, LMConfig

V, H, E, C = 9, 5, 4, 3

each_conditioning = pytest.mark.parametrize(("condition", "mode", "cell"), [
    (condition, mode, cell) for condition in ("label", "vector")
    for mode in ("init", "input") for cell in ("lstm", "gru")])


def make_model(condition="label", mode="init", cell="lstm", *, layers=2, dtype=torch.float32):
    cfg = LMConfig(vocab_size=V, cell=cell, hidden_size=H, embedding_size=E, num_layers=layers,
                   condition=condition, num_conditions=3 if condition == "label" else 0,
                   condition_size=C if condition == "vector" else 0, condition_mode=mode)
    return LanguageModel(cfg).to(dtype).eval()


def conditions(condition, dtype=torch.float32):
    """A batch of two different conditions."""
    if condition == "label":
        return torch.tensor([0, 2])
    return torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=dtype)


def hidden_of(layer_state):
    return layer_state[0] if isinstance(layer_state, tuple) else layer_state


@each_conditioning
def test_forward_over_a_sequence_equals_repeated_step(condition, mode, cell):
    model = make_model(condition, mode, cell)
    c = conditions(condition)
    tokens = torch.randint(0, V, (6, 2))
    with torch.no_grad():
        hidden, final = model(tokens, model.initial_state(2, condition=c))
        expected = model.log_probs(hidden)                                  # (T, B, V)
    state = model.initial_state(2, condition=c)
    for t in range(6):
        log_probs, state = model.step(tokens[t], state)
        torch.testing.assert_close(log_probs, expected[t], rtol=0, atol=1e-5)
    for a, b in zip(final[:-1], state[:-1]):
        torch.testing.assert_close(hidden_of(a), hidden_of(b), rtol=0, atol=1e-5)
    # the condition rides along unchanged as the last element of the state
    torch.testing.assert_close(state[-1], model.condition_vector(c, 2)[None], rtol=0, atol=0)
    assert torch.equal(final[-1], state[-1])


@pytest.mark.parametrize("condition", ["label", "vector"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_init_mode_initial_state_is_tanh_of_an_affine_map_of_the_condition(condition, cell):
    model = make_model(condition, "init", cell, dtype=torch.float64)
    c = conditions(condition, torch.float64)
    state = model.initial_state(2, condition=c)
    assert len(state) == 2 + 1
    vectors = (model.condition_embedding.weight[c] if condition == "label" else c).detach()
    assert vectors.shape == (2, H if condition == "label" else C)     # label size 0: H
    for k in range(2):
        W, b = model.condition_init[k].weight.detach(), model.condition_init[k].bias.detach()
        for row in range(2):
            expected = torch.tanh(W @ vectors[row] + b)
            torch.testing.assert_close(hidden_of(state[k])[0, row], expected, rtol=0,
                                       atol=1e-12)
        if cell == "lstm":
            assert (state[k][1] == 0).all()                           # the cell starts at 0
    torch.testing.assert_close(state[-1][0], vectors, rtol=0, atol=0)
    # one condition row serves the whole batch
    broadcast = model.initial_state(3, condition=c[:1])
    torch.testing.assert_close(hidden_of(broadcast[0])[0],
                               hidden_of(state[0])[0, :1].expand(3, -1), rtol=0, atol=0)


@pytest.mark.parametrize("condition", ["label", "vector"])
def test_input_mode_concatenates_the_condition_to_every_input(condition):
    """Hand recomputation with the first layer run on [embedding; condition] from zeros."""
    model = make_model(condition, "input", "gru", layers=1, dtype=torch.float64)
    c = conditions(condition, torch.float64)
    tokens = torch.randint(0, V, (5, 2))
    state = model.initial_state(2, condition=c)
    assert (state[0] == 0).all()
    vectors = model.condition_vector(c, 2)
    with torch.no_grad():
        hidden, _ = model(tokens, state)
        x = torch.cat([model.embedding(tokens), vectors[None].expand(5, -1, -1)], -1)
        expected, _ = model.layers[0](x, torch.zeros(1, 2, H, dtype=torch.float64))
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-12)


@each_conditioning
def test_different_conditions_give_different_distributions(condition, mode, cell):
    model = make_model(condition, mode, cell)
    tokens = torch.randint(0, V, (4, 1)).expand(4, 2)                   # the same text twice
    with torch.no_grad():
        hidden, _ = model(tokens, model.initial_state(2, condition=conditions(condition)))
        log_probs = model.log_probs(hidden)
    assert (log_probs[:, 0] - log_probs[:, 1]).abs().amax(-1).min() > 1e-4   # at every step


def test_condition_errors():
    label, vector = make_model("label"), make_model("vector")
    tokens = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="conditioned on a label; pass one"):
        label.initial_state(2)
    with pytest.raises(ValueError, match="conditioned on a vector; pass one"):
        vector(tokens)                                    # no state: no condition either
    for bad in ([3], [-1], [0, 3]):
        with pytest.raises(ValueError, match=r"label ids must be in \[0, 3\)"):
            label.initial_state(len(bad), condition=torch.tensor(bad))
    with pytest.raises(ValueError, match="expected label ids"):
        label.initial_state(2, condition=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="expected label ids"):
        label.initial_state(2, condition=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="expected vectors of 3 numbers, got shape \\(2,\\)"):
        vector.initial_state(1, condition=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="expected vectors of 3 numbers"):
        vector.initial_state(2, condition=torch.ones(2, 4))
    with pytest.raises(ValueError, match="label ids must be"):
        label.conditioned_on(5)                           # checked when wrapped
    with pytest.raises(ValueError, match="expected vectors of 3 numbers"):
        ConditionedModel(vector, [1.0])
    plain = LanguageModel(LMConfig(vocab_size=V, hidden_size=H, num_layers=1))
    with pytest.raises(ValueError, match="not conditioned"):
        plain.initial_state(2, condition=torch.tensor([0, 1]))


def _replay(model, c, prime, steps, pick):
    """Tokens from model.step under condition c, each chosen by pick(log_probs (1, V))."""
    state = model.initial_state(1, condition=c)
    for token in prime:
        log_probs, state = model.step(torch.tensor([token]), state)
    out = []
    for _ in range(steps):
        out.append(pick(log_probs))
        log_probs, state = model.step(torch.tensor(out[-1:]), state)
    return out


@pytest.mark.parametrize("condition", ["label", "vector"])
def test_conditioned_model_samples_like_step_under_its_condition(condition):
    model = make_model(condition, "input", "lstm")
    fixed = 2 if condition == "label" else [0.5, -1.0, 2.0]
    c = torch.tensor([fixed]) if condition == "label" else torch.tensor(fixed)
    wrapped = model.conditioned_on(fixed)
    a = list(sample_tokens(wrapped, [1, 4], max_tokens=30, seed=7))
    assert a == list(sample_tokens(wrapped, [1, 4], max_tokens=30, seed=7))
    generator = torch.Generator().manual_seed(7)
    assert a == _replay(model, c, [1, 4], 30, lambda lp: int(torch.multinomial(
        lp.exp(), 1, generator=generator)))
    greedy = list(sample_tokens(wrapped, [1, 4], max_tokens=8, greedy=True))
    assert greedy == _replay(model, c, [1, 4], 8, lambda lp: int(lp[0].argmax()))


@pytest.mark.parametrize("condition", ["label", "vector"])
def test_exhaustive_beam_search_of_a_conditioned_model_finds_the_brute_force_best(condition):
    model = make_model(condition, "init", "gru")
    fixed = 1 if condition == "label" else [0.5, -1.0, 2.0]
    wrapped = model.conditioned_on(fixed)
    eos, n = 2, 3
    c = torch.tensor([fixed]) if condition == "label" else torch.tensor(fixed)

    def score(seq):
        with torch.no_grad():
            hidden, _ = model(torch.tensor([1] + list(seq[:-1]))[:, None],
                              model.initial_state(1, condition=c))
            lp = model.log_probs(hidden)[:, 0].double()
        return float(lp[torch.arange(len(seq)), list(seq)].sum()) / len(seq)

    candidates = [seq for k in range(1, n + 1) for seq in itertools.product(range(V), repeat=k)
                  if eos not in seq[:-1] and (seq[-1] == eos or k == n)]
    best = max(candidates, key=score)
    found = beam_search(wrapped, [1], beam_size=V ** n, max_tokens=n, eos_id=eos)
    assert len(found) == len(candidates)
    assert tuple(found[0][0]) == best
    assert found[0][1] == pytest.approx(score(best), abs=1e-5)


@pytest.mark.parametrize("condition", ["label", "vector"])
def test_condition_rows_must_match_the_batch(condition):
    model = make_model(condition)
    with pytest.raises(ValueError, match="condition"):
        model.initial_state(3, condition=conditions(condition))        # 2 rows for 3 streams
