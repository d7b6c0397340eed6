import math

import pytest
import torch

from jtcse.modeling.towers import load_tower
from jtcse.modeling.twin import BridgedTwin, bridged_layer_indices

SENTENCES = ["a man is playing a guitar .", "the cat sleeps", "stocks fell sharply on monday after the report"]


def towers(path, **kwargs):
    a, tokenizer = load_tower(str(path), attn_implementation="eager", **kwargs)
    torch.manual_seed(7)
    b, _ = load_tower(str(path), attn_implementation="eager", **kwargs)
    with torch.no_grad():  # make tower B differ from A so cross terms are not trivially equal to own terms
        for p in b.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return a.eval(), b.eval(), tokenizer


def batch(tokenizer):
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def test_layer_spacing_and_divisor_error():
    assert bridged_layer_indices(12, 6) == [1, 3, 5, 7, 9, 11]
    assert bridged_layer_indices(6, 3) == [1, 3, 5]
    assert bridged_layer_indices(6, 0) == []
    with pytest.raises(ValueError, match=r"num_layers=4 must divide the tower's layer count 6"):
        bridged_layer_indices(6, 4)


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_roberta"])
def test_side_mode_leaves_each_tower_unchanged(arch, request):
    a, b, tok = towers(request.getfixturevalue(arch))
    enc = batch(tok)
    twin = BridgedTwin(a, b, num_ca_layers=2, mode="side", pooling="cls")
    with torch.no_grad():
        out_a, out_b = twin(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        plain_a, plain_b = a(**enc), b(**enc)
    assert torch.allclose(out_a.embedding, plain_a.last_hidden_state[:, 0], atol=1e-6)
    assert torch.allclose(out_b.embedding, plain_b.last_hidden_state[:, 0], atol=1e-6)
    assert torch.allclose(out_a.pooler, plain_a.pooler_output, atol=1e-6)
    assert out_a.cross is not None and not torch.allclose(out_a.cross, out_a.embedding)


def hand_cross(layer_a, layer_b, x_a, x_b, attention_mask):
    """softmax(Q_A K_A^T / sqrt(d) + mask) V_B, head by head, then A's dense + residual + LayerNorm."""
    sa_a, sa_b = layer_a.attention.self, layer_b.attention.self
    heads, d = sa_a.num_attention_heads, sa_a.attention_head_size
    q, k, v = sa_a.query(x_a), sa_a.key(x_a), sa_b.value(x_b)
    batch_size, length, _ = q.shape
    context = torch.zeros_like(q)
    for n in range(batch_size):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            scores = q[n, :, cols] @ k[n, :, cols].T / math.sqrt(d)
            scores = scores.masked_fill(attention_mask[n][None, :] == 0, float("-inf"))
            context[n, :, cols] = torch.softmax(scores, dim=-1) @ v[n, :, cols]
    out = layer_a.attention.output
    return out.LayerNorm(context @ out.dense.weight.T + out.dense.bias + x_a)


def test_cross_output_equals_hand_computation(tiny_bert):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    twin = BridgedTwin(a, b, num_ca_layers=1, mode="side", pooling="mean")
    (layer,) = twin.bridged
    assert layer == a.config.num_hidden_layers - 1
    with torch.no_grad():
        out_a, out_b = twin(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        x_a = a(**enc, output_hidden_states=True).hidden_states[layer]
        x_b = b(**enc, output_hidden_states=True).hidden_states[layer]
        expected_a = hand_cross(a.encoder.layer[layer], b.encoder.layer[layer], x_a, x_b, enc["attention_mask"])
        expected_b = hand_cross(b.encoder.layer[layer], a.encoder.layer[layer], x_b, x_a, enc["attention_mask"])
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = lambda t: (t * mask).sum(1) / mask.sum(1)  # noqa: E731
    assert torch.allclose(out_a.cross, mean(expected_a), atol=1e-5)
    assert torch.allclose(out_b.cross, mean(expected_b), atol=1e-5)


def test_mix_mode_changes_streams_and_zero_gate_does_not(tiny_bert):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    with torch.no_grad():
        plain = a(**enc).last_hidden_state[:, 0]
        mixed, _ = BridgedTwin(a, b, num_ca_layers=2, mode="mix", mix_gate=0.5)(enc["input_ids"], enc["attention_mask"])
        gated_off, _ = BridgedTwin(a, b, num_ca_layers=2, mode="mix", mix_gate=0.0)(enc["input_ids"], enc["attention_mask"])
    assert not torch.allclose(mixed.embedding, plain, atol=1e-3)
    assert torch.allclose(gated_off.embedding, plain, atol=1e-5)


def test_bridge_gradients_reach_both_towers(tiny_bert):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    twin = BridgedTwin(a, b, num_ca_layers=2, mode="side").train()
    out_a, _ = twin(enc["input_ids"], enc["attention_mask"])
    torch.manual_seed(0)
    (out_a.cross * torch.randn_like(out_a.cross)).sum().backward()  # a plain sum of a LayerNorm output has no gradient
    layer = twin.bridged[-1]
    assert b.encoder.layer[layer].attention.self.value.weight.grad.abs().sum() > 0  # V_B feeds A's cross output
    assert a.encoder.layer[layer].attention.self.query.weight.grad.abs().sum() > 0


def test_towers_of_different_depth_are_refused(tiny_bert, tmp_path):
    from tests.conftest import build_tiny_model

    a, _ = load_tower(str(tiny_bert))
    b, _ = load_tower(str(build_tiny_model(tmp_path / "m2", layers=2)))
    with pytest.raises(ValueError, match="same shape"):
        BridgedTwin(a, b, num_ca_layers=2)
