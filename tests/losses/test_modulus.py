import torch

from jtcse.losses import TensorModulusLoss


def naive_tm(h_a, h_b, x_a, x_b, clamp=1e-4):
    """The authors' per-sample loop: first views of A against second views of B."""
    terms = []
    for k in range(h_a.shape[0] // 2):
        u, v = h_a[2 * k], h_b[2 * k + 1]
        c = torch.dot(u, v) / (u.norm() * v.norm())
        if c < 0:
            c = torch.tensor(clamp, dtype=h_a.dtype)  # constant: no gradient through it
        p, q = x_a[2 * k], x_b[2 * k + 1]
        terms.append(-torch.log(c) * 0.5 * (p - q).norm() / (p.norm() + q.norm()))
    return torch.stack(terms).mean()


def test_modulus_matches_naive_loop_including_clamp_branch():
    torch.manual_seed(0)
    h_a = torch.randn(12, 6, dtype=torch.float64)
    h_b = torch.randn(12, 6, dtype=torch.float64)
    h_b[1] = -h_a[0]  # a guaranteed negative cosine
    h_b[3] = h_a[2] + 0.1  # and a guaranteed positive one
    x_a = torch.randn(12, 6, dtype=torch.float64)
    x_b = torch.randn(12, 6, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (h_a, h_b, x_a, x_b)]
    cos = torch.nn.functional.cosine_similarity(h_a[0::2], h_b[1::2], dim=-1)
    assert (cos < 0).any() and (cos > 0).any()
    fast = TensorModulusLoss()(*leaves)
    slow = naive_tm(*leaves)
    assert torch.allclose(fast, slow, rtol=1e-10)
    for g_fast, g_slow in zip(torch.autograd.grad(fast, leaves), torch.autograd.grad(slow, leaves)):
        assert torch.allclose(g_fast, g_slow, rtol=1e-8, atol=1e-12)


def test_clamped_rows_give_no_gradient_to_the_cosine_vectors():
    h_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    h_b = torch.tensor([[0.0, 1.0], [-1.0, 0.2]], dtype=torch.float64, requires_grad=True)  # cos(h_a0, h_b1) < 0
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    loss = TensorModulusLoss()(h_a, h_b, x, x)
    g_a, g_b, g_x = torch.autograd.grad(loss, (h_a, h_b, x))
    assert torch.all(g_a == 0) and torch.all(g_b == 0)
    assert g_x.abs().sum() > 0  # the length ratio still pulls


def test_ratio_is_zero_for_equal_vectors():
    v = torch.randn(4, 3, dtype=torch.float64)
    pairs = v.repeat_interleave(2, 0)
    assert TensorModulusLoss()(pairs, pairs, pairs, pairs).item() == 0.0
