import math

import torch

from jtcse.losses import InfoNCELoss


def naive_nce(h: torch.Tensor, tau: float) -> torch.Tensor:
    n = h.shape[0]
    total = 0.0
    for i in range(n):
        pos = i + 1 if i % 2 == 0 else i - 1
        cos = [torch.dot(h[i], h[j]) / (h[i].norm() * h[j].norm()) for j in range(n)]
        den = sum(torch.exp(cos[j] / tau) for j in range(n) if j != i)
        total = total - torch.log(torch.exp(cos[pos] / tau) / den)
    return total / n


def test_infonce_matches_naive_loop_value_and_gradient():
    torch.manual_seed(0)
    h = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    fast = InfoNCELoss(0.05)(h)
    slow = naive_nce(h, 0.05)
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-10)
    (g_fast,) = torch.autograd.grad(fast, h)
    (g_slow,) = torch.autograd.grad(slow, h)
    assert torch.allclose(g_fast, g_slow, rtol=1e-8, atol=1e-10)


def test_identical_views_far_from_others_give_near_zero_loss():
    base = torch.eye(4, dtype=torch.float64)
    h = base.repeat_interleave(2, dim=0)  # rows 2k and 2k+1 identical, different sentences orthogonal
    loss = InfoNCELoss(0.05)(h)
    expected = math.log(1 + 6 * math.exp(-1 / 0.05))
    assert abs(loss.item() - expected) < 1e-12


def test_odd_row_count_is_refused():
    import pytest

    with pytest.raises(ValueError, match="even row count"):
        InfoNCELoss()(torch.randn(5, 3))
