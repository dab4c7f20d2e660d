"""The backends of rnnkit's layers: "bptt" (hand BPTT), "autograd" (the reference) and
"native" (PyTorch's kernels) compute the same thing; whole stacks pass gradcheck; truncated
BPTT with a carried state continues a sequence exactly."""

import pytest
import torch
from torch.func import functional_call

import rnnkit
from rnnkit.cells import make_cell
from conftest import (assert_same_results, each_nonstandard_variant, each_standard_variant,
                      each_variant, each_variant_backend, flat_tensors, forward_and_grads,
                      hx_leaves, make_layer, random_hx)

I, H, T = 3, 4, 5
LENGTHS = [3, 5, 1, 4]
F64 = {"rtol": 1e-10, "atol": 1e-12}


def _pair(kind, options, backend, reference="autograd", **kwargs):
    """Two float64 layers with the same weights on ``backend`` and ``reference``."""
    layer = make_layer(kind, options, I, H, backend=backend, dtype=torch.float64, **kwargs)
    ref = make_layer(kind, options, I, H, backend=reference, dtype=torch.float64, **kwargs)
    ref.load_state_dict(layer.state_dict())
    return layer, ref


def _compare_backends(kind, options, backend, reference):
    layer, ref = _pair(kind, options, backend, reference, num_layers=3, bidirectional=True)
    x = torch.randn(T, len(LENGTHS), I, dtype=torch.float64, requires_grad=True)
    hx = random_hx(kind, 6, len(LENGTHS), H, dtype=torch.float64)
    leaves = (x, *hx_leaves(hx))
    assert_same_results(forward_and_grads(layer, x, hx, leaves=leaves, lengths=LENGTHS),
                        forward_and_grads(ref, x, hx, leaves=leaves, lengths=LENGTHS), **F64)


@each_variant
def test_bptt_matches_autograd_backend_deep_bidirectional_lengths(kind, options):
    _compare_backends(kind, options, "bptt", "autograd")


@each_standard_variant
def test_native_matches_autograd_backend_deep_bidirectional_lengths(kind, options):
    _compare_backends(kind, options, "native", "autograd")


@each_nonstandard_variant
def test_native_backend_rejects_cells_without_kernel(kind, options):
    with pytest.raises(ValueError, match=r"backend: 'native' has no PyTorch kernel"):
        make_layer(kind, options, I, H, backend="native")


@each_variant
def test_auto_backend_is_native_exactly_where_a_kernel_exists(kind, options):
    """… and is faster: on the CPU the compiled GRU and Elman loops beat PyTorch's."""
    from rnnkit import compiled
    layer = make_layer(kind, options, I, H)
    expected = "native" if layer.cell.native_mode and not compiled.prefers(layer.cell) else "bptt"
    assert layer.resolved_backend() == expected
    # and it computes what the engine computes
    ref = make_layer(kind, options, I, H, backend="autograd")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(T, 2, I)
    torch.testing.assert_close(layer(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)


@each_variant
def test_gradcheck_whole_stack_float64(kind, options):
    """gradcheck of a 2-layer bidirectional stack with lengths, w.r.t. input, initial state
    and every parameter, backend "bptt"."""
    In, Hn, lengths = 2, 2, [3, 1, 2]
    layer = make_layer(kind, options, In, Hn, num_layers=2, bidirectional=True, backend="bptt",
                       dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    x = torch.randn(3, len(lengths), In, dtype=torch.float64, requires_grad=True)
    hx = hx_leaves(random_hx(kind, 4, len(lengths), Hn, dtype=torch.float64))
    k = len(hx)

    def stack(x, *rest):
        state0 = tuple(rest[:k]) if k > 1 else rest[0]
        out, state = functional_call(layer, dict(zip(names, rest[k:])), (x, state0),
                                     {"lengths": lengths})
        return tuple(flat_tensors(out, state))

    assert torch.autograd.gradcheck(stack, (x, *hx, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


@each_variant_backend
def test_truncated_bptt_windows_continue_the_sequence(kind, options, backend):
    """Two windows with the state carried through ``rnnkit.detach_state`` give the one-run
    outputs and final state; the second window's gradient stops at the carried state."""
    layer = make_layer(kind, options, I, H, num_layers=2, backend=backend, dtype=torch.float64)
    x = torch.randn(6, 2, I, dtype=torch.float64)
    full_out, full_state = layer(x)

    first = x[:3].clone().requires_grad_()
    out1, state1 = layer(first)
    carried = rnnkit.detach_state(state1)
    for c, s in zip(flat_tensors(carried), flat_tensors(state1)):
        assert c.grad_fn is None and not c.requires_grad
        assert torch.equal(c, s)
    out2, state2 = layer(x[3:], carried)

    torch.testing.assert_close(torch.cat([out1, out2]), full_out, rtol=1e-12, atol=1e-12)
    for s2, s in zip(flat_tensors(state2), flat_tensors(full_state)):
        torch.testing.assert_close(s2, s, rtol=1e-12, atol=1e-12)
    out2.sum().backward()
    assert first.grad is None                               # the graph was cut


def test_detach_state_keeps_nested_structure():
    h = torch.randn(2, 3, requires_grad=True) * 2
    c = torch.randn(2, 3, requires_grad=True) * 2
    detached = rnnkit.detach_state([h, (h, c)])
    assert isinstance(detached, tuple) and isinstance(detached[1], tuple)
    for d, s in zip(flat_tensors(detached), [h, h, c]):
        assert d.grad_fn is None and torch.equal(d, s)


@each_variant_backend
def test_weight_dropout_acts_only_in_training_and_never_changes_parameters(kind, options,
                                                                         backend):
    if make_cell(kind, **options).weight_hh_shape(H) is None:     # nothing to drop: refused
        with pytest.raises(ValueError, match=r"weight_dropout: the cell .* has no recurrent "
                                             r"weight to drop"):
            make_layer(kind, options, I, H, backend=backend, weight_dropout=0.5)
        return
    layer = make_layer(kind, options, I, H, num_layers=2, backend=backend, weight_dropout=0.5)
    plain = make_layer(kind, options, I, H, num_layers=2, backend=backend)
    plain.load_state_dict(layer.state_dict())
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    x = torch.randn(T, 2, I)
    out_train, _ = layer(x)
    assert not torch.allclose(out_train, plain(x)[0])
    for n, p in layer.named_parameters():
        assert torch.equal(p, before[n]), n
    layer.eval()
    plain.eval()
    torch.testing.assert_close(layer(x)[0], plain(x)[0], rtol=0, atol=0)


@each_standard_variant
def test_weight_dropout_masks_agree_across_backends(kind, options):
    """With the same seed every backend draws the same DropConnect masks and so gives the
    same training-mode outputs and gradients."""
    results, first = [], None
    for backend in ("bptt", "autograd", "native"):
        layer = make_layer(kind, options, I, H, num_layers=2, bidirectional=True,
                           backend=backend, weight_dropout=0.5, dtype=torch.float64)
        if first is None:
            first = layer
        else:
            layer.load_state_dict(first.state_dict())
        x = torch.randn(T, 2, I, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        torch.manual_seed(11)
        results.append(forward_and_grads(layer, x))
    for got in results[1:]:
        assert_same_results(got, results[0], **F64)


@each_variant
def test_bptt_matches_autograd_backend_without_bias(kind, options):
    layer, ref = _pair(kind, options, "bptt", "autograd", num_layers=2, bidirectional=True,
                       bias=False)
    assert not any("bias" in n for n, _ in layer.named_parameters())
    x = torch.randn(T, len(LENGTHS), I, dtype=torch.float64, requires_grad=True)
    assert_same_results(forward_and_grads(layer, x, leaves=(x,), lengths=LENGTHS),
                        forward_and_grads(ref, x, leaves=(x,), lengths=LENGTHS), **F64)
