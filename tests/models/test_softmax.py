"""Output heads against brute-force references (float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.models.softmax import AdaptiveSoftmax, ClassSoftmax, FullSoftmax, frequency_classes

V, H, N = 23, 6, 40


@pytest.fixture
def counts():
    return [int(1000 / (i + 1)) + 1 for i in range(V)]


def test_frequency_classes_bins_by_cumulative_mass():
    counts = [50, 25, 13, 6, 3, 2, 1]            # total 100
    classes = frequency_classes(counts, 4).tolist()
    # cumulative shares .50 .75 .88 .94 .97 .99 1.0 -> bins ceil(4 s) - 1 = 1 2 3 3 3 3 3
    # relabelled without gaps: 0 1 2 2 2 2 2
    assert classes == [0, 1, 2, 2, 2, 2, 2]


def test_class_softmax_matches_brute_force(counts):
    torch.manual_seed(0)
    head = ClassSoftmax(H, frequency_classes(counts, 5)).double()
    hidden = torch.randn(N, H, dtype=torch.float64)
    targets = torch.randint(0, V, (N,))
    class_lp = F.log_softmax(hidden @ head.class_weight.T + head.class_bias, -1)
    expected = []
    for n in range(N):
        w = targets[n].item()
        c = head.class_of[w].item()
        words = (head.class_of == c).nonzero().squeeze(1)
        lp = F.log_softmax(hidden[n] @ head.weight[words].T + head.bias[words], -1)
        expected.append(-(class_lp[n, c] + lp[(words == w).nonzero().item()]))
    torch.testing.assert_close(head.nll(hidden, targets), torch.stack(expected))


def test_class_softmax_log_probs_normalised_and_consistent(counts):
    torch.manual_seed(1)
    head = ClassSoftmax(H, frequency_classes(counts, 4)).double()
    hidden = torch.randn(N, H, dtype=torch.float64)
    lp = head.log_probs(hidden)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(N, dtype=torch.float64))
    targets = torch.randint(0, V, (N,))
    torch.testing.assert_close(-lp.gather(1, targets[:, None]).squeeze(1),
                               head.nll(hidden, targets))


def test_class_softmax_gradient_matches_log_probs_path(counts):
    torch.manual_seed(2)
    head = ClassSoftmax(H, frequency_classes(counts, 4)).double()
    hidden = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    g1 = torch.autograd.grad(head.nll(hidden, targets).sum(), hidden)[0]
    g2 = torch.autograd.grad(-head.log_probs(hidden).gather(1, targets[:, None]).sum(), hidden)[0]
    torch.testing.assert_close(g1, g2)


def test_full_softmax_is_cross_entropy_and_ties_weights():
    torch.manual_seed(3)
    tied = torch.nn.Parameter(torch.randn(V, H))
    head = FullSoftmax(H, V, tied)
    assert head.weight is tied
    hidden, targets = torch.randn(N, H), torch.randint(0, V, (N,))
    expected = F.cross_entropy(hidden @ tied.T + head.bias, targets, reduction="none")
    torch.testing.assert_close(head.nll(hidden, targets), expected)
    torch.testing.assert_close(head.log_probs(hidden).exp().sum(1), torch.ones(N))


def test_adaptive_softmax_agrees_with_its_log_probs():
    torch.manual_seed(4)
    head = AdaptiveSoftmax(16, 200, [20, 80]).double()
    hidden, targets = torch.randn(N, 16, dtype=torch.float64), torch.randint(0, 200, (N,))
    lp = head.log_probs(hidden)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(N, dtype=torch.float64))
    torch.testing.assert_close(head.nll(hidden, targets),
                               -lp.gather(1, targets[:, None]).squeeze(1))
    assert math.isfinite(head.nll(hidden, targets).sum().item())
