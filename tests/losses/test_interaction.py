import pytest
import torch

from jtcse.losses import InteractionInfoNCELoss


def naive_icnce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        pos = i ^ 1
        cos = [torch.dot(a[i], b[j]) / (a[i].norm() * b[j].norm()) for j in range(n)]
        den = sum(torch.exp(cos[j] / tau) for j in range(n) if j != i)  # same-view pair j = i excluded
        total = total - torch.log(torch.exp(cos[pos] / tau) / den)
    return total / n


@pytest.mark.parametrize("flip", [False, True])
def test_icnce_matches_naive_loop_each_direction(flip):
    torch.manual_seed(1)
    a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    fast = InteractionInfoNCELoss(0.07, "random")(a, b, flip=flip)
    slow = naive_icnce(b, a, 0.07) if flip else naive_icnce(a, b, 0.07)
    assert torch.allclose(fast, slow, rtol=1e-10)
    g_fast = torch.autograd.grad(fast, (a, b))
    g_slow = torch.autograd.grad(slow, (a, b))
    for x, y in zip(g_fast, g_slow):
        assert torch.allclose(x, y, rtol=1e-8, atol=1e-12)


def test_same_view_pair_is_excluded():
    # Make the same-view pair (i, i) overwhelmingly similar: had it stayed in the denominator the loss would be large.
    torch.manual_seed(2)
    a = torch.randn(4, 8, dtype=torch.float64)
    b = a.clone()
    b[1::2] = a[0::2]  # b's other view of row 2k equals a's row 2k -> positive is perfect
    b[0::2] = a[1::2]
    loss = InteractionInfoNCELoss(0.05)(a, b, flip=False)
    assert torch.allclose(loss, naive_icnce(a, b, 0.05))
    assert loss.item() < 0.5


def test_symmetric_is_mean_of_both_directions():
    torch.manual_seed(3)
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    sym = InteractionInfoNCELoss(0.05, "symmetric")(a, b)
    assert torch.allclose(sym, 0.5 * (naive_icnce(a, b, 0.05) + naive_icnce(b, a, 0.05)))


def test_bad_direction_names_the_setting():
    with pytest.raises(ValueError, match="icnce_direction"):
        InteractionInfoNCELoss(direction="both")
