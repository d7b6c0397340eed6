import math

import pytest
import torch

from jtcse.modeling.towers import load_tower
from jtcse.modeling.twin import BridgedTwin, bridge_layer_counts, bridged_layer_indices

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
    assert bridge_layer_counts(12) == [0, 1, 2, 3, 4, 6, 12] and bridge_layer_counts(6) == [0, 1, 2, 3, 6]
    assert bridged_layer_indices(12, 6) == [1, 3, 5, 7, 9, 11]
    assert bridged_layer_indices(6, 3) == [1, 3, 5]
    assert bridged_layer_indices(6, 0) == []
    with pytest.raises(
        ValueError, match=r"num_layers: 4 does not divide the 6 layers of the tower; use one of \[1, 2, 3, 6\]"
    ):
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


def hand_cross(layer_a, layer_b, x_a, x_b, attention_mask, residual=None):
    """softmax(Q_A K_A^T / sqrt(d) + mask) V_B, head by head, then A's dense + residual + LayerNorm.

    Q_A, K_A come from x_a (tower A's main stream), V_B from x_b; the residual is x_a unless given (a cross stream).
    """
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
    return out.LayerNorm(context @ out.dense.weight.T + out.dense.bias + (x_a if residual is None else residual))


def hand_ffn(layer, x):
    """BERT's feed-forward block: LayerNorm(W_o gelu(W_i x + b_i) + b_o + x)."""
    inner = torch.nn.functional.gelu(x @ layer.intermediate.dense.weight.T + layer.intermediate.dense.bias)
    return layer.output.LayerNorm(inner @ layer.output.dense.weight.T + layer.output.dense.bias + x)


def hand_plain_layer(layer, x, attention_mask):
    """A whole BERT layer by hand: self-attention is the cross formula with the layer's own values."""
    return hand_ffn(layer, hand_cross(layer, layer, x, x, attention_mask))


def masked_mean(t, attention_mask):
    mask = attention_mask.unsqueeze(-1).float()
    return (t * mask).sum(1) / mask.sum(1)


def test_side_cross_output_is_the_full_layer_by_hand(tiny_bert):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    twin = BridgedTwin(a, b, num_ca_layers=1, mode="side", pooling="mean")
    (layer,) = twin.bridged
    assert layer == a.config.num_hidden_layers - 1
    with torch.no_grad():
        out_a, out_b = twin(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        x_a = a(**enc, output_hidden_states=True).hidden_states[layer]
        x_b = b(**enc, output_hidden_states=True).hidden_states[layer]
        la, lb = a.encoder.layer[layer], b.encoder.layer[layer]
        expected_a = hand_ffn(la, hand_cross(la, lb, x_a, x_b, enc["attention_mask"]))
        expected_b = hand_ffn(lb, hand_cross(lb, la, x_b, x_a, enc["attention_mask"]))
    assert torch.allclose(out_a.cross, masked_mean(expected_a, enc["attention_mask"]), atol=1e-5)
    assert torch.allclose(out_b.cross, masked_mean(expected_b, enc["attention_mask"]), atol=1e-5)


def test_hand_layer_reproduces_the_stock_layer(tiny_bert):
    """The hand formulas below are only worth trusting if they give the real BERT layer back."""
    a, _, tok = towers(tiny_bert)
    enc = batch(tok)
    with torch.no_grad():
        hidden = a(**enc, output_hidden_states=True).hidden_states
        assert torch.allclose(
            hand_plain_layer(a.encoder.layer[0], hidden[0], enc["attention_mask"]), hidden[1], atol=1e-5
        )


def test_stream_cross_output_equals_hand_computation(tiny_bert):
    """4 layers, 2 bridged (1 and 3): the stream starts at layer 1's input, runs layer 2 plainly, ends after 3."""
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    mask = enc["attention_mask"]
    twin = BridgedTwin(a, b, num_ca_layers=2, mode="stream", pooling="cls")
    assert twin.bridged == [1, 3]
    with torch.no_grad():
        out_a, out_b = twin(enc["input_ids"], mask, enc["token_type_ids"])
        hid_a = a(**enc, output_hidden_states=True).hidden_states
        hid_b = b(**enc, output_hidden_states=True).hidden_states

        def stream(own, other, hid_own, hid_other):
            s = hid_own[1]
            s = hand_ffn(
                own.encoder.layer[1],
                hand_cross(own.encoder.layer[1], other.encoder.layer[1], hid_own[1], hid_other[1], mask, residual=s),
            )
            s = hand_plain_layer(own.encoder.layer[2], s, mask)
            return hand_ffn(
                own.encoder.layer[3],
                hand_cross(own.encoder.layer[3], other.encoder.layer[3], hid_own[3], hid_other[3], mask, residual=s),
            )

        expected_a, expected_b = stream(a, b, hid_a, hid_b), stream(b, a, hid_b, hid_a)
    assert torch.allclose(out_a.cross, expected_a[:, 0], atol=1e-5)
    assert torch.allclose(out_b.cross, expected_b[:, 0], atol=1e-5)
    # The main streams are the plain towers: what is exported is what was trained.
    assert torch.allclose(out_a.embedding, hid_a[-1][:, 0], atol=1e-6)
    assert torch.allclose(out_b.embedding, hid_b[-1][:, 0], atol=1e-6)


def test_attention_cross_output_is_the_attention_block_by_hand(tiny_bert):
    """'attention' mode: c is the last bridged layer's P_A V_B through the attention output block, no feed-forward."""
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    mask = enc["attention_mask"]
    with torch.no_grad():
        out_a, out_b = BridgedTwin(a, b, num_ca_layers=2, mode="attention", pooling="mean")(
            enc["input_ids"], mask, enc["token_type_ids"]
        )
        last = a.config.num_hidden_layers - 1
        hid_a = a(**enc, output_hidden_states=True).hidden_states
        hid_b = b(**enc, output_hidden_states=True).hidden_states
        la, lb = a.encoder.layer[last], b.encoder.layer[last]
        expected_a = hand_cross(la, lb, hid_a[last], hid_b[last], mask)
        expected_b = hand_cross(lb, la, hid_b[last], hid_a[last], mask)
    assert torch.allclose(out_a.cross, masked_mean(expected_a, mask), atol=1e-5)
    assert torch.allclose(out_b.cross, masked_mean(expected_b, mask), atol=1e-5)
    assert torch.allclose(out_a.embedding, masked_mean(hid_a[-1], mask), atol=1e-6)  # main stream untouched


def test_stream_with_one_bridged_layer_is_side_and_more_layers_compound(tiny_bert):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    args = (enc["input_ids"], enc["attention_mask"])
    with torch.no_grad():
        side, _ = BridgedTwin(a, b, num_ca_layers=1, mode="side")(*args)
        stream1, _ = BridgedTwin(a, b, num_ca_layers=1, mode="stream")(*args)
        stream2, _ = BridgedTwin(a, b, num_ca_layers=2, mode="stream")(*args)
        side2, _ = BridgedTwin(a, b, num_ca_layers=2, mode="side")(*args)
    assert torch.allclose(stream1.cross, side.cross, atol=1e-6)
    assert torch.allclose(side2.cross, side.cross, atol=1e-6)  # side: only the last bridged layer counts
    assert not torch.allclose(stream2.cross, stream1.cross, atol=1e-3)  # stream: num_layers matters


@pytest.mark.parametrize("mode", ["stream", "side", "attention"])
def test_disabled_cross_is_exactly_the_plain_towers(tiny_bert, mode):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    twin = BridgedTwin(a, b, num_ca_layers=2, mode=mode)
    twin.compute_cross = False
    with torch.no_grad():
        out_a, out_b = twin(enc["input_ids"], enc["attention_mask"])
        plain = BridgedTwin(a, b, num_ca_layers=0)(enc["input_ids"], enc["attention_mask"])
    assert out_a.cross is None and out_b.cross is None
    assert torch.equal(out_a.embedding, plain[0].embedding) and torch.equal(out_b.pooler, plain[1].pooler)


def test_unknown_mode_names_the_setting(tiny_bert):
    a, b, _ = towers(tiny_bert)
    with pytest.raises(ValueError, match=r"train.cross_attention.mode must be one of stream, side, attention, mix"):
        BridgedTwin(a, b, num_ca_layers=2, mode="sideways")


def test_mix_mode_equals_hand_computation(tiny_bert):
    """One bridged layer (the last): its output is the plain layer's plus gate * the cross output (pre-FFN)."""
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    mask = enc["attention_mask"]
    twin = BridgedTwin(a, b, num_ca_layers=1, mode="mix", mix_gate=0.3, pooling="cls")
    (layer,) = twin.bridged
    with torch.no_grad():
        out_a, _ = twin(enc["input_ids"], mask, enc["token_type_ids"])
        hid_a = a(**enc, output_hidden_states=True).hidden_states
        hid_b = b(**enc, output_hidden_states=True).hidden_states
        cross = hand_cross(a.encoder.layer[layer], b.encoder.layer[layer], hid_a[layer], hid_b[layer], mask)
    assert torch.allclose(out_a.cross, cross[:, 0], atol=1e-5)
    assert torch.allclose(out_a.embedding, hid_a[-1][:, 0] + 0.3 * cross[:, 0], atol=1e-5)


def test_mix_mode_changes_streams_and_zero_gate_does_not(tiny_bert):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    with torch.no_grad():
        plain = a(**enc).last_hidden_state[:, 0]
        mixed, _ = BridgedTwin(a, b, num_ca_layers=2, mode="mix", mix_gate=0.5)(enc["input_ids"], enc["attention_mask"])
        gated_off, _ = BridgedTwin(a, b, num_ca_layers=2, mode="mix", mix_gate=0.0)(
            enc["input_ids"], enc["attention_mask"]
        )
    assert not torch.allclose(mixed.embedding, plain, atol=1e-3)
    assert torch.allclose(gated_off.embedding, plain, atol=1e-5)


@pytest.mark.parametrize("mode", ["stream", "side", "attention", "mix"])
def test_bridge_gradients_reach_both_towers(tiny_bert, mode):
    a, b, tok = towers(tiny_bert)
    enc = batch(tok)
    twin = BridgedTwin(a, b, num_ca_layers=2, mode=mode).train()
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
