"""The sequence classifier: masked pooling over variable lengths (rnnkit.models.classifier)."""

import pytest
import torch

from rnnkit.models.classifier import (POOLINGS, AttentionScores, ClassifierConfig,
                                      SequenceClassifier, pool)

V, E, H = 20, 5, 4
LENGTHS = [5, 2, 4, 1]


def classifier(cell="lstm", pooling="max", **options) -> SequenceClassifier:
    config = ClassifierConfig(vocab_size=V, num_classes=3, cell=cell, embedding_size=E,
                              hidden_size=H, pooling=pooling, **{"dropout": 0.0, **options})
    return SequenceClassifier(config).double().eval()


def padded_batch(lengths=LENGTHS, pad_low=0):
    """(T, B) tokens whose padding holds arbitrary ids (not only 0), and lengths."""
    T = max(lengths)
    tokens = torch.randint(1, V, (T, len(lengths)))
    for b, n in enumerate(lengths):
        tokens[n:, b] = torch.randint(pad_low, V, (T - n,))
    return tokens, torch.tensor(lengths)


def one_by_one(model, tokens, lengths) -> torch.Tensor:
    """Each example run alone, unpadded: (B, C)."""
    return torch.cat([model(tokens[:n, b:b + 1], torch.tensor([n]))
                      for b, n in enumerate(lengths.tolist())])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("num_layers, bidirectional", [(1, True), (2, True), (1, False)])
def test_padding_never_changes_classifier_logits(cell, pooling, num_layers, bidirectional):
    model = classifier(cell, pooling, num_layers=num_layers, bidirectional=bidirectional)
    tokens, lengths = padded_batch()
    with torch.no_grad():
        batched = model(tokens, lengths)
        other = tokens.clone()
        other[torch.arange(tokens.shape[0])[:, None] >= lengths[None]] = 7   # other padding
        torch.testing.assert_close(model(other, lengths), batched, rtol=0, atol=1e-12)
        torch.testing.assert_close(batched, one_by_one(model, tokens, lengths))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_batch_gradient_is_the_sum_of_per_example_gradients(pooling):
    model = classifier("lstm", pooling)
    tokens, lengths = padded_batch()
    labels = torch.tensor([0, 2, 1, 2])
    loss = torch.nn.functional.cross_entropy(model(tokens, lengths), labels, reduction="sum")
    batched = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    alone = [torch.zeros_like(p) for p in model.parameters()]
    for b, n in enumerate(LENGTHS):
        logits = model(tokens[:n, b:b + 1], torch.tensor([n]))
        loss_b = torch.nn.functional.cross_entropy(logits, labels[b:b + 1], reduction="sum")
        for acc, g in zip(alone, torch.autograd.grad(loss_b, list(model.parameters()),
                                                      allow_unused=True)):
            if g is not None:
                acc += g
    for (name, _), g, e in zip(model.named_parameters(), batched, alone):
        torch.testing.assert_close(torch.zeros_like(e) if g is None else g, e,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------- pool() by hand

def random_outputs(lengths, F=6):
    """(T, B, F) outputs with large garbage past each length (pool must mask it)."""
    T = max(lengths)
    outputs = torch.randn(T, len(lengths), F, dtype=torch.float64)
    for b, n in enumerate(lengths):
        outputs[n:, b] = 1e3
    return outputs, torch.tensor(lengths)


def test_mean_pool_is_the_average_of_real_steps():
    outputs, lengths = random_outputs(LENGTHS)
    expected = torch.stack([outputs[:n, b].sum(0) / n for b, n in enumerate(LENGTHS)])
    torch.testing.assert_close(pool(outputs, lengths, "mean"), expected)


def test_max_pool_is_the_featurewise_max_of_real_steps():
    outputs, lengths = random_outputs(LENGTHS)
    outputs = -outputs.abs() - 1                     # all negative: zero padding would win
    expected = torch.stack([outputs[:n, b].max(0).values for b, n in enumerate(LENGTHS)])
    assert torch.equal(pool(outputs, lengths, "max"), expected)


def test_attention_pool_is_softmax_weighted_sum_of_real_steps():
    outputs, lengths = random_outputs(LENGTHS)
    scores = AttentionScores(6).double()
    expected = []
    with torch.no_grad():
        for b, n in enumerate(LENGTHS):
            o = outputs[:n, b]                                                  # (n, F)
            s = scores.v.weight @ torch.tanh(scores.proj.weight @ o.T + scores.proj.bias[:, None])
            a = torch.exp(s[0] - s[0].max())
            expected.append((a / a.sum()) @ o)
        torch.testing.assert_close(pool(outputs, lengths, "attention", attention=scores),
                                   torch.stack(expected))


def test_final_pool_takes_the_last_layers_directions():
    h_n = torch.randn(4, 3, 2, dtype=torch.float64)         # (L*D, B, H) with L=D=2
    outputs, lengths = random_outputs([1, 2, 2], F=4)
    expected = torch.cat([h_n[2], h_n[3]], dim=-1)
    assert torch.equal(pool(outputs, lengths, "final", h_n, num_directions=2), expected)
    assert torch.equal(pool(outputs, lengths, "final", h_n, num_directions=1), h_n[3])


# ---------------------------------------------------------------- against torch.nn

@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_final_pooling_matches_torch_forward_last_and_backward_first(cell, num_layers):
    model = classifier(cell, "final", num_layers=num_layers)
    twin = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        E, H, num_layers, bidirectional=True).double()
    twin.load_state_dict(model.encoder.rnn.state_dict(), strict=True)
    tokens, lengths = padded_batch()
    expected = []
    with torch.no_grad():
        for b, n in enumerate(LENGTHS):
            out, _ = twin(model.encoder.embedding(tokens[:n, b:b + 1]))        # (n, 1, 2H)
            expected.append(torch.cat([out[n - 1, 0, :H], out[0, 0, H:]]))
        z = torch.stack(expected)
        torch.testing.assert_close(model(tokens, lengths), model.output(z))


def test_dropout_acts_in_training_only():
    model = classifier("lstm", "mean", dropout=0.5, embedding_dropout=0.3)
    tokens, lengths = padded_batch()
    with torch.no_grad():
        eval_a, eval_b = model(tokens, lengths), model(tokens, lengths)
        model.train()
        train_a, train_b = model(tokens, lengths), model(tokens, lengths)
    assert torch.equal(eval_a, eval_b)
    assert not torch.allclose(train_a, eval_a) and not torch.allclose(train_a, train_b)


@pytest.mark.parametrize("field, value", [("pooling", "sum"), ("num_classes", 1),
                                          ("cell", "tcn"), ("dropout", 1.0)])
def test_config_rejects_bad_fields(field, value):
    with pytest.raises(ValueError, match=field):
        ClassifierConfig(**{"vocab_size": V, "num_classes": 3, field: value})
