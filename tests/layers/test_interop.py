"""rnnkit.RNN/LSTM/GRU against their torch.nn twins: state_dicts move both ways and give the
same outputs, final states and gradients, on every backend and input form."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkit
from conftest import (assert_all_close, assert_same_results, copy_parameters,
                      each_standard_variant, forward_and_grads, hx_leaves, make_layer,
                      make_torch_twin, random_hx)

I, H, T, B = 3, 4, 5, 3
TOL = {"rtol": 1e-4, "atol": 1e-5}
BACKENDS = ["bptt", "native", "autograd"]
each_backend = pytest.mark.parametrize("backend", BACKENDS)


def _input(batch_first, batch=B, steps=T):
    shape = (batch, steps, I) if batch_first else (steps, batch, I)
    return torch.randn(*shape, requires_grad=True)


def _pair(kind, options, backend, **kwargs):
    """A torch.nn module and an rnnkit module holding the torch module's weights."""
    ref = make_torch_twin(kind, options, I, H, **kwargs)
    layer = make_layer(kind, options, I, H, backend=backend, **kwargs)
    copy_parameters(ref, layer)
    return layer, ref


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@each_backend
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@each_standard_variant
def test_layer_matches_torch_state_dict(kind, options, num_layers, bidirectional, backend,
                                        batch_first):
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": batch_first}
    x = _input(batch_first)

    # torch -> rnnkit
    layer, ref = _pair(kind, options, backend, **kw)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert_same_results(forward_and_grads(layer, x, leaves=(x,)),
                        forward_and_grads(ref, x, leaves=(x,)), **TOL)

    # rnnkit -> torch: a freshly initialised rnnkit module's state_dict loads into torch.nn
    layer = make_layer(kind, options, I, H, backend=backend, **kw)
    ref = make_torch_twin(kind, options, I, H, **kw)
    copy_parameters(layer, ref)
    assert_same_results(forward_and_grads(layer, x, leaves=(x,)),
                        forward_and_grads(ref, x, leaves=(x,)), **TOL)


@each_backend
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@each_standard_variant
def test_layer_with_initial_state_matches_torch(kind, options, bidirectional, backend):
    layer, ref = _pair(kind, options, backend, num_layers=2, bidirectional=bidirectional)
    x = _input(False)
    hx = random_hx(kind, 2 * (1 + bidirectional), B, H)
    leaves = (x, *hx_leaves(hx))
    assert_same_results(forward_and_grads(layer, x, hx, leaves=leaves),
                        forward_and_grads(ref, x, hx, leaves=leaves), **TOL)


@each_backend
@each_standard_variant
def test_layer_without_bias_matches_torch(kind, options, backend):
    layer, ref = _pair(kind, options, backend, num_layers=2, bidirectional=True, bias=False)
    assert not any("bias" in n for n, _ in layer.named_parameters())
    x = _input(False)
    hx = random_hx(kind, 4, B, H)
    leaves = (x, *hx_leaves(hx))
    assert_same_results(forward_and_grads(layer, x, hx, leaves=leaves),
                        forward_and_grads(ref, x, hx, leaves=leaves), **TOL)


LENGTHS = [2, 5, 1, 4]          # unsorted, one example at full length


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@each_backend
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@each_standard_variant
def test_packed_sequence_matches_torch(kind, options, bidirectional, backend, with_hx):
    layer, ref = _pair(kind, options, backend, num_layers=2, bidirectional=bidirectional)
    x = _input(False, batch=len(LENGTHS))
    hx = random_hx(kind, 2 * (1 + bidirectional), len(LENGTHS), H) if with_hx else None

    def packed():                       # a fresh graph from x for each differentiated run
        return pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)

    with torch.no_grad():
        out, _ = layer(packed(), hx)
        want, _ = ref(packed(), hx)
    assert isinstance(out, PackedSequence)
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        assert torch.equal(getattr(out, field), getattr(want, field)), field
    leaves = (x, *hx_leaves(hx))
    assert_same_results(forward_and_grads(layer, packed(), hx, leaves=leaves),
                        forward_and_grads(ref, packed(), hx, leaves=leaves), **TOL)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@each_backend
@each_standard_variant
def test_unbatched_input_matches_torch(kind, options, backend, with_hx, batch_first):
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": batch_first}
    layer, ref = _pair(kind, options, backend, **kw)
    x = torch.randn(T, I, requires_grad=True)
    hx = random_hx(kind, 4, H) if with_hx else None
    want = forward_and_grads(ref, x, hx, leaves=(x, *hx_leaves(hx)))
    got = forward_and_grads(layer, x, hx, leaves=(x, *hx_leaves(hx)))
    assert [o.shape for o in got[0]] == [o.shape for o in want[0]]
    assert_same_results(got, want, **TOL)


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@each_backend
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@each_standard_variant
def test_lengths_on_padded_batch_equal_torch_packed(kind, options, bidirectional, backend,
                                                    batch_first, with_hx):
    kw = {"num_layers": 2, "bidirectional": bidirectional, "batch_first": batch_first}
    layer, ref = _pair(kind, options, backend, **kw)
    x = _input(batch_first, batch=len(LENGTHS))
    hx = random_hx(kind, 2 * (1 + bidirectional), len(LENGTHS), H) if with_hx else None
    lengths = torch.tensor(LENGTHS)

    class TorchWithLengths(nn.Module):
        """torch.nn's way to the same thing: pack, run, pad back to T."""

        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, hx=None):
            packed = pack_padded_sequence(x, lengths, batch_first=batch_first,
                                          enforce_sorted=False)
            out, state = self.rnn(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
            return out, state

    got = forward_and_grads(layer, x, hx, leaves=(x, *hx_leaves(hx)), lengths=lengths)
    want = forward_and_grads(TorchWithLengths(ref), x, hx, leaves=(x, *hx_leaves(hx)))
    want = (want[0], {k.removeprefix("rnn."): v for k, v in want[1].items()})
    assert_same_results(got, want, **TOL)


@pytest.mark.parametrize("lengths_as", ["list", "int32_tensor"])
@each_standard_variant
def test_lengths_as_list_or_int_tensor_agree(kind, options, lengths_as):
    layer = make_layer(kind, options, I, H, num_layers=2, bidirectional=True)
    x = _input(False, batch=len(LENGTHS))
    ref_out, ref_state = layer(x, lengths=torch.tensor(LENGTHS))
    given = LENGTHS if lengths_as == "list" else torch.tensor(LENGTHS, dtype=torch.int32)
    out, state = layer(x, lengths=given)
    assert_all_close([out, state], [ref_out, ref_state], rtol=0, atol=0)


@each_backend
@each_standard_variant
def test_dropout_between_layers_in_eval_matches_torch(kind, options, backend):
    layer, ref = _pair(kind, options, backend, num_layers=3, dropout=0.5, bidirectional=True)
    layer.eval()
    ref.eval()
    x = _input(False)
    assert_same_results(forward_and_grads(layer, x, leaves=(x,)),
                        forward_and_grads(ref, x, leaves=(x,)), **TOL)


@each_standard_variant
def test_native_dropout_in_training_matches_torch_with_same_seed(kind, options):
    """The fused kernel draws the same dropout masks as torch.nn from the same seed."""
    layer, ref = _pair(kind, options, "native", num_layers=3, dropout=0.5)
    x = _input(False)
    torch.manual_seed(7)
    got = forward_and_grads(layer, x, leaves=(x,))
    torch.manual_seed(7)
    want = forward_and_grads(ref, x, leaves=(x,))
    assert_same_results(got, want, **TOL)


@pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last")
@pytest.mark.parametrize("backend", ["bptt", "autograd"])
@each_standard_variant
def test_engine_dropout_in_training_changes_output_only_between_layers(kind, options, backend):
    """Training-mode dropout acts between layers: a 1-layer stack ignores it, a 2-layer one
    does not (and matches eval with dropout=0 when dropout is 0)."""
    one, ref = _pair(kind, options, backend, num_layers=1, dropout=0.5)
    x = _input(False)
    assert_all_close(one(x)[0], ref(x)[0], **TOL)       # training mode, nothing to drop
    two = make_layer(kind, options, I, H, num_layers=2, dropout=0.5, backend=backend)
    out_train, _ = two(x)
    two.eval()
    out_eval, _ = two(x)
    assert not torch.allclose(out_train, out_eval)


class _Tagger(nn.Module):
    """A small user model: embedding -> LSTM -> linear, predicting the next token."""

    def __init__(self, lstm):
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.lstm = lstm
        self.head = nn.Linear(4, 7)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def _train_losses(model, steps=4):
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [0, 1, 0, 2, 0, 3]])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 7), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@each_backend
def test_user_model_trains_the_same_with_rnnkit_lstm(backend):
    torch_model = _Tagger(nn.LSTM(3, 4, batch_first=True))
    rnnkit_model = _Tagger(rnnkit.LSTM(3, 4, batch_first=True, backend=backend))
    copy_parameters(torch_model, rnnkit_model)
    want = _train_losses(torch_model)
    got = _train_losses(rnnkit_model)
    assert want[-1] < want[0]                              # it does learn
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert_all_close([p for _, p in rnnkit_model.named_parameters()],
                     [p for _, p in torch_model.named_parameters()],
                     [n for n, _ in torch_model.named_parameters()], **TOL)
