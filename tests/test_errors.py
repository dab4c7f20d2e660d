"""Bad input gets a clear ValueError naming the argument and what was expected (DESIGN
invariant 6), never a bare traceback from deep inside the engine."""

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from conftest import each_variant, make_layer, num_states

I, H = 3, 4


def _raises(match):
    return pytest.raises(ValueError, match=match)


# -- forward: the input ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (2, 5, 3, 3)], ids=["1d", "4d"])
@each_variant
def test_wrong_input_rank(kind, options, shape):
    layer = make_layer(kind, options, I, H)
    with _raises(r"input: expected a 3-D tensor \(T, B, I\) with I=3 or an unbatched 2-D "
                 r"\(T, I\), got shape " + re.escape(str(shape).replace(",)", ")"))):
        layer(torch.randn(*shape))


def test_wrong_input_rank_names_batch_first_layout():
    layer = rnnkit.LSTM(I, H, batch_first=True)
    with _raises(r"input: expected a 3-D tensor \(B, T, I\)"):
        layer(torch.randn(5))


@pytest.mark.parametrize("shape", [(5, 2, 4), (5, 7)], ids=["batched", "unbatched"])
@each_variant
def test_wrong_feature_size(kind, options, shape):
    layer = make_layer(kind, options, I, H)
    with _raises(r"input: expected last dimension input_size=3, got shape "
                 + re.escape(str(shape))):
        layer(torch.randn(*shape))


def test_wrong_feature_size_of_packed_input():
    packed = pack_padded_sequence(torch.randn(4, 2, 5), [4, 2])
    with _raises(r"input\.data: expected last dimension input_size=3, got shape \(6, 5\)"):
        rnnkit.GRU(I, H)(packed)


@pytest.mark.parametrize("shape", [(0, 2, 3), (4, 0, 3), (0, 3)], ids=["T0", "B0", "unbatched_T0"])
def test_empty_input(shape):
    with _raises(r"input: expected .*got shape " + re.escape(str(shape))):
        rnnkit.LSTM(I, H)(torch.randn(*shape))


def test_input_not_a_tensor():
    with _raises(r"input: expected a Tensor or PackedSequence, got list"):
        rnnkit.RNN(I, H)([[0.0] * I])


# -- forward: lengths --------------------------------------------------------------------

@pytest.mark.parametrize(("lengths", "match"), [
    ([4, 0, 2], r"lengths: expected values in \[1, T=4\], got min 0, max 4"),
    ([4, 5, 2], r"lengths: expected values in \[1, T=4\], got min 2, max 5"),
    (torch.tensor([[4], [3], [2]]),
     r"lengths: expected a 1-D integer tensor of shape \(3,\), got torch\.int64 of shape \(3, 1\)"),
    (torch.tensor([4.0, 3.0, 2.0]),
     r"lengths: expected a 1-D integer tensor of shape \(3,\), got torch\.float32 of shape \(3\)"),
    (torch.tensor([True, True, True]), r"lengths: expected a 1-D integer tensor"),
    ([4, 3], r"lengths: expected one length per example, shape \(3,\), got shape \(2,\)"),
    (torch.tensor([4, 3, 2, 1]),
     r"lengths: expected one length per example, shape \(3,\), got shape \(4,\)"),
    ([4.0, 3.0, 2.0], r"lengths: expected a 1-D integer tensor or a list of ints, got list"),
    ("432", r"lengths: expected a 1-D integer tensor or a list of ints, got str"),
], ids=["zero", "longer_than_T", "2d_tensor", "float_tensor", "bool_tensor", "too_few",
        "too_many", "float_list", "string"])
@pytest.mark.parametrize("backend", ["bptt", "native"])
def test_bad_lengths(lengths, match, backend):
    layer = rnnkit.LSTM(I, H, backend=backend)
    with _raises(match):
        layer(torch.randn(4, 3, I), lengths=lengths)


def test_lengths_with_packed_input():
    packed = pack_padded_sequence(torch.randn(4, 2, I), [4, 2])
    with _raises(r"lengths: a PackedSequence carries its own lengths"):
        rnnkit.LSTM(I, H)(packed, lengths=[4, 2])


def test_lengths_with_unbatched_input():
    with _raises(r"lengths: only for a batched 3-D input, got an unbatched input of shape "
                 r"\(4, 3\)"):
        rnnkit.GRU(I, H)(torch.randn(4, I), lengths=[4])


# -- forward: hx -------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "unbatched"), [
    ((1, 3, H), False), ((2, 2, H), False), ((2, 3, H + 1), False), ((2, H), False),
    ((1, H), True), ((2, 1, H), True),
], ids=["layers", "batch", "hidden", "rank", "unbatched_layers", "unbatched_rank"])
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_hx_of_wrong_shape(kind, shape, unbatched):
    layer = make_layer(kind, {}, I, H, num_layers=2)
    x = torch.randn(5, I) if unbatched else torch.randn(5, 3, I)
    expected = (2, H) if unbatched else (2, 3, H)
    good, bad = torch.zeros(expected), torch.zeros(shape)
    cases = [((bad, good), "h_0"), ((good, bad), "c_0")] if num_states(kind) == 2 \
        else [(bad, "h_0")]
    for hx, name in cases:
        with _raises(rf"hx: expected {name} of shape {re.escape(str(expected))} "
                     r"\(num_layers\*num_directions, batch, hidden_size\), got "
                     + re.escape(str(shape))):
            layer(x, hx)


@pytest.mark.parametrize("hx", [
    pytest.param(lambda: torch.zeros(1, 3, H), id="tensor"),
    pytest.param(lambda: (torch.zeros(1, 3, H),), id="1-tuple"),
    pytest.param(lambda: (torch.zeros(1, 3, H), None), id="tuple_with_None"),
])
def test_lstm_hx_must_be_a_tuple_of_two_tensors(hx):
    with _raises(r"hx: expected a tuple \(h_0, c_0\) of tensors, got "):
        rnnkit.LSTM(I, H)(torch.randn(5, 3, I), hx())


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_single_state_hx_must_be_a_tensor(kind):
    with _raises(r"hx: expected a tensor h_0, got tuple"):
        make_layer(kind, {}, I, H)(torch.randn(5, 3, I), (torch.zeros(1, 3, H),) * 2)


# -- construction ------------------------------------------------------------------------

def test_unknown_cell_lists_the_registered_ones():
    with _raises(r"cell: unknown 'transformer'; expected one of \['lstm', 'lstm_peephole', "
                 r"'gru', .*'irnn'.*\] or 'package.module:Class'"):
        rnnkit.make_cell("transformer")


def test_option_a_cell_does_not_take_names_both():
    with _raises(r"cell 'gru' takes no option 'peephole' \(its options: \['reset_before'\]; "
                 r"every cell's: \['recurrent_dropout', 'zoneout'\]\)"):
        rnnkit.make_cell("gru", peephole=True)
    with _raises(r"cell 'lstm_peephole' takes no option 'peephole' \(its options: none;"):
        rnnkit.RecurrentStack(I, H, cell="lstm_peephole", cell_options={"peephole": True})


@pytest.mark.parametrize(("spec", "reason"), [
    ("no_such_module_xyz:Cell", r"cannot import 'no_such_module_xyz' \(ModuleNotFoundError"),
    ("rnnkit.cells:NoSuchCell", r"module 'rnnkit.cells' has no 'NoSuchCell'"),
    ("torch.nn:Linear", r"Linear is not a subclass of rnnkit.cells.Cell"),
    ("os:system", r"system is not a subclass of rnnkit.cells.Cell"),
    ("rnnkit.cells:", r"expected 'package.module:Class'"),
])
def test_user_cell_path_that_is_not_a_cell(spec, reason):
    with _raises(reason):
        rnnkit.make_cell(spec)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_unknown_backend(kind):
    with _raises(r"backend: expected one of \['auto', 'bptt', 'native', 'autograd', 'scan', 'triton'\], "
                 r"got 'cudnn'"):
        make_layer(kind, {}, I, H, backend="cudnn")


def test_unknown_nonlinearity():
    match = r"nonlinearity: expected one of \['tanh', 'relu', 'sigmoid'\] for cell 'rnn', got 'gelu'"
    with _raises(match):
        rnnkit.RNN(I, H, nonlinearity="gelu")
    with _raises(match):
        rnnkit.make_cell("rnn", nonlinearity="gelu")


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_unknown_init(kind):
    with _raises(r"init: expected one of \['uniform', 'orthogonal', 'identity'\], got 'xavier'"):
        make_layer(kind, {}, I, H, init="xavier")


def test_native_backend_with_sigmoid_rnn():
    with _raises(r"backend: 'native' has no PyTorch kernel for the cell "
                 r"ElmanCell\(nonlinearity='sigmoid'\)"):
        rnnkit.RNN(I, H, nonlinearity="sigmoid", backend="native")


@pytest.mark.parametrize("proj_size", [2, -1])
def test_lstm_proj_size_not_supported(proj_size):
    with _raises(rf"proj_size: rnnkit\.LSTM supports only 0, got {proj_size}"):
        rnnkit.LSTM(I, H, proj_size=proj_size)


@pytest.mark.parametrize("cls", [rnnkit.GRU, rnnkit.RNN])
def test_forget_bias_on_a_layer_without_forget_gate(cls):
    # GRU and RNN have no forget_bias argument at all: Python's own error names it
    with pytest.raises(TypeError, match=r"forget_bias"):
        cls(I, H, forget_bias=1.0)


@pytest.mark.parametrize("kind", ["gru", "rnn", "gru_reset_before"])
def test_forget_bias_rejected_by_generic_stack(kind):
    with _raises(r"forget_bias: only for a cell with a forget gate whose biases reach it "
                 r"\(and bias=True\)"):
        rnnkit.RecurrentStack(I, H, cell=kind, forget_bias=1.0)


def test_forget_bias_on_lstm_without_bias():
    with _raises(r"forget_bias: only for a cell with a forget gate whose biases reach it "
                 r"\(and bias=True\)"):
        rnnkit.LSTM(I, H, bias=False, forget_bias=1.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"input_size": 0}, r"input_size: expected a positive int, got 0"),
    ({"hidden_size": 2.5}, r"hidden_size: expected a positive int, got 2\.5"),
    ({"num_layers": True}, r"num_layers: expected a positive int, got True"),
    ({"dropout": 1.5}, r"dropout: expected a number in \[0, 1\], got 1\.5"),
    ({"weight_dropout": 1.0}, r"weight_dropout: expected a number in \[0, 1\), got 1\.0"),
], ids=["input_size", "hidden_size", "num_layers", "dropout", "weight_dropout"])
def test_bad_constructor_numbers(kwargs, match):
    args = {"input_size": I, "hidden_size": H, **kwargs}
    with _raises(match):
        rnnkit.LSTM(**args)
