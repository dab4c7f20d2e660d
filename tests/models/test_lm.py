"""The language model: regularisers, state handling, and the generation protocol."""

import pytest
import torch

from rnnkit.models.lm import LanguageModel, LMConfig, embedding_dropout, locked_dropout


def test_locked_dropout_uses_one_mask_for_all_steps():
    torch.manual_seed(0)
    x = torch.ones(7, 3, 5)
    y = locked_dropout(x, 0.5, training=True)
    assert torch.equal(y, y[:1].expand_as(y))                 # same mask at every step
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_embedding_dropout_drops_whole_rows():
    torch.manual_seed(0)
    w = torch.randn(50, 4)
    d = embedding_dropout(w, 0.5, training=True)
    kept = (d != 0).all(1)
    dropped = (d == 0).all(1)
    assert bool((kept | dropped).all()) and 0 < int(dropped.sum()) < 50
    torch.testing.assert_close(d[kept], w[kept] * 2)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_windows_with_carried_state_equal_one_pass(cell):
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=30, cell=cell, hidden_size=8)).eval()
    tokens = torch.randint(0, 30, (12, 3))
    whole, _ = model(tokens)
    first, state = model(tokens[:5])
    second, _ = model(tokens[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole)


@pytest.mark.parametrize("options", [{"cell": "lstm", "tie_weights": True},
                                     {"cell": "lstm_peephole"},
                                     {"cell": "gru"}, {"cell": "gru_reset_before"},
                                     {"cell": "rnn", "cell_options": {"nonlinearity": "sigmoid"}}])
def test_step_and_prime_agree_with_forward(options):
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=30, hidden_size=8, **options)).eval()
    tokens = torch.randint(0, 30, (6, 2))
    hidden, _ = model(tokens)
    expected = model.log_probs(hidden[-1])
    lp, state = model.prime(tokens, None)
    torch.testing.assert_close(lp, expected)
    state, lp = None, None
    for t in range(6):
        lp, state = model.step(tokens[t], state)
    torch.testing.assert_close(lp, expected)


def test_weight_dropout_keeps_parameters_and_varies_masks():
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=30, hidden_size=8, weight_dropout=0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 30, (5, 2))
    a, _ = model(tokens)
    b, _ = model(tokens)
    assert not torch.allclose(a, b)                          # fresh DropConnect mask per call
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k                  # parameters never modified
        assert torch.isfinite(v).all(), k
    model.eval()
    torch.testing.assert_close(model(tokens)[0], model(tokens)[0])


@pytest.mark.parametrize("bad, message", [
    ({"cell": "transformer"}, "cell"),
    ({"softmax": "hierarchical"}, "softmax"),
    ({"dropout": 1.0}, "dropout"),
    ({"tie_weights": True, "embedding_size": 4}, "tie_weights"),
    ({"tie_weights": True, "softmax": "adaptive"}, "tie_weights"),
])
def test_config_rejects_bad_options(bad, message):
    with pytest.raises(ValueError, match=message):
        LMConfig(vocab_size=30, hidden_size=8, **bad)
