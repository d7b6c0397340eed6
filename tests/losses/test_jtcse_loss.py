import pytest
import torch

from jtcse.losses import InfoNCELoss, InteractionInfoNCELoss, JTCSELoss, TensorModulusLoss
from jtcse.modeling.twin import TowerOutput


def outputs(seed, cross=True, pooler=True):
    g = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(8, 5, generator=g, dtype=torch.float64)  # noqa: E731
    return TowerOutput(make(), make() if pooler else None, make() if cross else None)


def test_total_is_weighted_sum_of_the_parts():
    a, b = outputs(0), outputs(1)
    loss = JTCSELoss(w_nce=0.3, w_icnce=2.0, w_cross=0.7, w_tm=5.0, icnce_direction="symmetric")(a, b)
    nce = InfoNCELoss()(a.embedding) + InfoNCELoss()(b.embedding)
    ic = InteractionInfoNCELoss(direction="symmetric")
    icnce, cross = ic(a.embedding, b.embedding), ic(a.cross, b.cross)
    tm = TensorModulusLoss()(a.embedding, b.embedding, a.pooler, b.pooler) + TensorModulusLoss()(
        b.embedding, a.embedding, b.pooler, a.pooler
    )
    assert torch.allclose(loss["loss"], 0.3 * nce + 2.0 * icnce + 0.7 * cross + 5.0 * tm)
    assert torch.allclose(loss["loss_tm"], tm)
    assert torch.allclose(loss["loss_icnce"], icnce) and torch.allclose(loss["loss_cross"], cross)


def test_random_direction_is_shared_by_both_interaction_terms():
    a, b = outputs(0), outputs(1)
    ic = InteractionInfoNCELoss()
    torch.manual_seed(3)
    flip = bool(torch.randint(0, 2, ()).item())
    torch.manual_seed(3)
    loss = JTCSELoss(w_nce=0, w_tm=0)(a, b)
    assert torch.allclose(loss["loss_icnce"], ic(a.embedding, b.embedding, flip=flip))
    assert torch.allclose(loss["loss_cross"], ic(a.cross, b.cross, flip=flip))


def test_without_a_bridge_there_is_no_cross_term():
    loss = JTCSELoss(w_cross=3.0)(outputs(0, cross=False), outputs(1, cross=False))
    assert "loss_cross" not in loss


def test_modulus_on_embedding_uses_sentence_vectors():
    a, b = outputs(0, pooler=False), outputs(1, pooler=False)
    loss = JTCSELoss(modulus_on="embedding", w_nce=0, w_icnce=0, w_cross=0)(a, b)
    tm = TensorModulusLoss()(a.embedding, b.embedding, a.embedding, b.embedding) + TensorModulusLoss()(
        b.embedding, a.embedding, b.embedding, a.embedding
    )
    assert torch.allclose(loss["loss"], tm)


def test_pooler_mode_without_pooler_names_the_setting():
    with pytest.raises(ValueError, match="modulus_on"):
        JTCSELoss()(outputs(0, pooler=False), outputs(1, pooler=False))
