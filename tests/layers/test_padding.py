"""Variable lengths are exact (DESIGN invariant 4): whatever sits in the padding of a batch
given with ``lengths=``, no output, final state or gradient of a real token changes."""

import pytest
import torch

from conftest import each_variant_backend, forward_and_grads, make_layer, random_hx

I, H, T = 3, 4, 5
LENGTHS = [3, 5, 1, 4]          # unsorted; one example at full length, one of length 1


def _pad_mask(batch_first):
    """True at padded positions, in the layout of the input."""
    steps = torch.arange(T).unsqueeze(1)                           # (T, 1)
    mask = steps >= torch.tensor(LENGTHS).unsqueeze(0)              # (T, B)
    return mask.t() if batch_first else mask


@pytest.mark.parametrize("padding", ["huge", "nan"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@each_variant_backend
def test_padding_never_changes_real_tokens(kind, options, backend, batch_first, padding):
    layer = make_layer(kind, options, I, H, num_layers=2, bidirectional=True,
                       batch_first=batch_first, backend=backend, dtype=torch.float64)
    B = len(LENGTHS)
    shape = (B, T, I) if batch_first else (T, B, I)
    pads = _pad_mask(batch_first).unsqueeze(-1).expand(shape)       # (…, I)
    x = torch.randn(*shape, dtype=torch.float64)
    x[pads] = 0.0
    other = x.clone()
    other[pads] = (1e3 * torch.randn(*shape, dtype=torch.float64))[pads] if padding == "huge" \
        else float("nan")
    x.requires_grad_()
    other.requires_grad_()
    hx = random_hx(kind, 4, B, H, dtype=torch.float64)
    hx_list = list(hx) if isinstance(hx, tuple) else [hx]

    (out, *final), grads = forward_and_grads(layer, x, hx, leaves=(x, *hx_list),
                                             lengths=LENGTHS)
    (out2, *final2), grads2 = forward_and_grads(layer, other, hx, leaves=(other, *hx_list),
                                                lengths=LENGTHS)

    exact = {"rtol": 0, "atol": 0}
    out_pads = pads[..., :1].expand(out.shape)
    assert (out[out_pads] == 0).all() and (out2[out_pads] == 0).all()   # zero at pads
    torch.testing.assert_close(out2, out, **exact)                      # real tokens unchanged
    for f2, f in zip(final2, final):
        torch.testing.assert_close(f2, f, **exact)
    assert (grads["leaf0"][pads] == 0).all() and (grads2["leaf0"][pads] == 0).all()
    torch.testing.assert_close(grads2["leaf0"], grads["leaf0"], **exact)
    for name in grads:
        if name != "leaf0":
            torch.testing.assert_close(grads2[name], grads[name], **exact,
                                       msg=lambda m, name=name: f"grad {name}: {m}")
    # the test could fail: real tokens do get gradient
    assert grads["leaf0"][~pads].abs().sum() > 0


@each_variant_backend
def test_lengths_equal_running_each_example_alone(kind, options, backend):
    """Each example of a padded batch, run alone at its own length, gives the same output
    rows and final states (both directions, both layers)."""
    layer = make_layer(kind, options, I, H, num_layers=2, bidirectional=True, backend=backend,
                       dtype=torch.float64)
    B = len(LENGTHS)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = random_hx(kind, 4, B, H, dtype=torch.float64)
    hxs = list(hx) if isinstance(hx, tuple) else [hx]
    with torch.no_grad():
        out, state = layer(x, hx, lengths=LENGTHS)
        finals = list(state) if isinstance(state, tuple) else [state]
        for b, n in enumerate(LENGTHS):
            own_hx = [h[:, b:b + 1] for h in hxs]
            alone, alone_state = layer(x[:n, b:b + 1], tuple(own_hx) if len(own_hx) > 1
                                       else own_hx[0])
            alone_finals = list(alone_state) if isinstance(alone_state, tuple) else [alone_state]
            torch.testing.assert_close(out[:n, b:b + 1], alone, rtol=1e-12, atol=1e-12)
            for f, a in zip(finals, alone_finals):
                torch.testing.assert_close(f[:, b:b + 1], a, rtol=1e-12, atol=1e-12)
