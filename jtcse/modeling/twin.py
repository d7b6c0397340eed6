"""Two towers run in lockstep, with the cross-attention bridge of JTCSE between them.

The bridge reuses the stock transformers layers: forward hooks on each bridged layer's ``query``, ``key`` and
``value`` projections capture what the layer computes anyway, and the cross context ``P_A V_B`` goes through
tower A's own attention output block (dense, dropout, residual, LayerNorm). No transformers code is copied or
patched, and the bridge adds no parameters, so exported towers stay plain encoders.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from jtcse.errors import ConfigError
from jtcse.modeling.towers import pool, pooler_of


def bridge_layer_counts(num_hidden_layers: int) -> list[int]:
    """The valid ``train.cross_attention.num_layers`` for towers of this depth: 0 (no bridge) or a divisor of the
    layer count, so the bridged layers are equally spaced and end at the last one. The one home of that rule."""
    return [0, *(d for d in range(1, num_hidden_layers + 1) if num_hidden_layers % d == 0)]


def check_bridge_layers(
    num_ca_layers: int | list[int],
    num_hidden_layers: int,
    key: str = "train.cross_attention.num_layers",
    model: str = "the tower",
) -> None:
    """Refuse bridged-layer counts (one, or every value a search may try) that the rule above does not allow,
    naming the setting ``key`` and the ``model`` whose depth they must divide."""
    values = num_ca_layers if isinstance(num_ca_layers, list) else [num_ca_layers]
    allowed = bridge_layer_counts(num_hidden_layers)
    bad = [v for v in values if int(v) not in allowed]
    if bad:
        shown = f"{bad} do" if isinstance(num_ca_layers, list) else f"{bad[0]} does"
        raise ConfigError(
            f"{key}: {shown} not divide the {num_hidden_layers} layers of {model}; "
            f"use one of {allowed[1:]}, or 0 for no bridge"
        )


def bridged_layer_indices(num_hidden_layers: int, num_ca_layers: int) -> list[int]:
    """Equally spaced bridged layers ending at the last one (12 layers, 6 bridged -> 1, 3, 5, 7, 9, 11)."""
    check_bridge_layers(num_ca_layers, num_hidden_layers)
    if num_ca_layers == 0:
        return []
    stride = num_hidden_layers // num_ca_layers
    return [stride * (k + 1) - 1 for k in range(num_ca_layers)]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None or not all(_has_bert_attention(layer) for layer in layers):
        raise TypeError(
            f"{type(model).__name__}: cross-attention needs a BERT/RoBERTa-style encoder "
            "(encoder.layer[i].attention.self.query/key/value, attention.output and feed_forward_chunk)"
        )
    return layers


def _has_bert_attention(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    sa = getattr(attention, "self", None)
    return (
        all(hasattr(sa, n) for n in ("query", "key", "value", "num_attention_heads"))
        and hasattr(attention, "output")
        and hasattr(layer, "feed_forward_chunk")
    )


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 padding mask -> (B, 1, 1, L) additive mask, as both eager and SDPA attention accept."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@contextmanager
def capture_projections(layer: nn.Module):
    """Record the outputs of a layer's query/key/value projections during one forward call."""
    sa = layer.attention.self
    captured: dict[str, torch.Tensor] = {}
    handles = [
        getattr(sa, name).register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name in ("query", "key", "value")
    ]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def cross_attention_output(
    layer: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    other_value: torch.Tensor,
    layer_input: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V_other, then this layer's attention output block with its own residual.

    The product runs through ``scaled_dot_product_attention`` (fused kernels, no B x H x L x L probability tensor
    kept for backward where the kernel avoids it), with the layer's own attention dropout while training."""
    sa = layer.attention.self
    batch, length, _ = query.shape
    heads, head_dim = sa.num_attention_heads, sa.attention_head_size

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, length, heads, head_dim).transpose(1, 2)

    context = torch.nn.functional.scaled_dot_product_attention(
        split(query),
        split(key),
        split(other_value),
        attn_mask=mask.to(query.dtype),
        dropout_p=sa.dropout.p if sa.training else 0.0,
    )
    context = context.transpose(1, 2).reshape(batch, length, heads * head_dim)
    return layer.attention.output(context, layer_input)


@dataclass
class TowerOutput:
    """What the losses need from one tower for a batch of 2N rows."""

    embedding: torch.Tensor  # h: pooled last-layer states
    pooler: torch.Tensor | None  # p: BERT pooler output tanh(W h_cls + b), when the checkpoint has a pooler
    cross: torch.Tensor | None  # c: pooled output of the bridge (see BridgedTwin's modes), None without one


#: The bridge designs (``train.cross_attention.mode``); see :class:`BridgedTwin`.
MODES = ("stream", "side", "attention", "mix")


class BridgedTwin(nn.Module):
    """Tower A and tower B run layer by layer so each bridged layer can see the other tower's values.

    At a bridged layer i, tower T's own attention probabilities P_T (from its main stream) weigh the other
    tower's values V_other of that layer. What happens next is the mode:

    - ``stream``: each tower also runs a *cross stream*, from the first bridged layer's input to the last layer,
      through that tower's full layers (attention output block and feed-forward). At bridged layers the stream's
      context is P_T V_other (residual: the stream's own state); at the layers between, the stream runs the plain
      layer. c_T is the pooled final stream state, so it lives in the same space as h_T and every bridged layer
      compounds into it. The main streams, and so the exported towers, are exactly the plain towers.
    - ``side``: c_T is the last bridged layer's cross output after that layer's full block (P_T V_other through
      the attention output block *and* the feed-forward), residual from the main stream; main streams untouched.
      Only the last bridged layer counts, so ``num_layers`` changes nothing in this mode.
    - ``attention``: METHOD.md's reconstruction and the cheapest bridge: c_T is the last bridged layer's P_T V_other
      through that layer's attention output block only (projection, residual from the main stream, LayerNorm),
      no feed-forward; main streams untouched. Only the last bridged layer counts, as in ``side``.
    - ``mix``: at every bridged layer ``mix_gate * (attention output block of P_T V_other)`` is added into the
      tower's main stream, and c_T is the last one of those (read before the feed-forward).

    ``compute_cross = False`` skips the bridge where it does not touch the main streams (all but mix): the
    forward is then exactly the two plain towers, which is what a zero weight on the cross term should cost.
    """

    def __init__(
        self,
        tower_a: nn.Module,
        tower_b: nn.Module,
        *,
        num_ca_layers: int,
        mode: str = "stream",
        mix_gate: float = 0.1,
        pooling: str | tuple[str, str] = "cls",
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"train.cross_attention.mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.tower_a, self.tower_b = tower_a, tower_b
        n_a, n_b = tower_a.config.num_hidden_layers, tower_b.config.num_hidden_layers
        if num_ca_layers and (n_a != n_b or tower_a.config.hidden_size != tower_b.config.hidden_size):
            raise ValueError("cross-attention needs two towers of the same shape (layers and hidden size)")
        if num_ca_layers:
            encoder_layers(tower_a), encoder_layers(tower_b)
        self.bridged = bridged_layer_indices(n_a, num_ca_layers)
        self.mode, self.mix_gate = mode, mix_gate
        #: Each tower's pooling (tower A's, tower B's): towers may pool differently (pretrain.tower_*.pooling).
        self.poolings: tuple[str, str] = (pooling, pooling) if isinstance(pooling, str) else tuple(pooling)
        self.compute_cross = True

    def _cross_layers(self) -> set[int]:
        # In 'side' and 'attention' modes only the last bridged layer's cross output is used: computing the others
        # is waste.
        if self.mode in ("side", "attention"):
            return {self.bridged[-1]} if self.bridged else set()
        return set(self.bridged)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[TowerOutput, TowerOutput]:
        if not self.bridged or (not self.compute_cross and self.mode != "mix"):
            return self._plain(self.tower_a, input_ids, attention_mask, token_type_ids), self._plain(
                self.tower_b, input_ids, attention_mask, token_type_ids
            )
        emb_kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            emb_kwargs["token_type_ids"] = token_type_ids
        h_a = self.tower_a.embeddings(**emb_kwargs)
        h_b = self.tower_b.embeddings(**emb_kwargs)
        mask = additive_mask(attention_mask, h_a.dtype)
        cross_at = self._cross_layers()
        cross_a = cross_b = None
        stream_a = stream_b = None  # the cross streams, from the first bridged layer on ('stream' mode)
        for i, (layer_a, layer_b) in enumerate(zip(self.tower_a.encoder.layer, self.tower_b.encoder.layer)):
            if self.mode == "stream" and i == self.bridged[0]:
                stream_a, stream_b = h_a, h_b
            if i not in cross_at:
                h_a, h_b = layer_a(h_a, mask), layer_b(h_b, mask)
                if stream_a is not None:
                    stream_a, stream_b = layer_a(stream_a, mask), layer_b(stream_b, mask)
                continue
            x_a, x_b = h_a, h_b
            with capture_projections(layer_a) as qkv_a, capture_projections(layer_b) as qkv_b:
                h_a, h_b = layer_a(x_a, mask), layer_b(x_b, mask)
            if self.mode == "stream":
                stream_a = layer_a.feed_forward_chunk(
                    cross_attention_output(layer_a, qkv_a["query"], qkv_a["key"], qkv_b["value"], stream_a, mask)
                )
                stream_b = layer_b.feed_forward_chunk(
                    cross_attention_output(layer_b, qkv_b["query"], qkv_b["key"], qkv_a["value"], stream_b, mask)
                )
                continue
            cross_a = cross_attention_output(layer_a, qkv_a["query"], qkv_a["key"], qkv_b["value"], x_a, mask)
            cross_b = cross_attention_output(layer_b, qkv_b["query"], qkv_b["key"], qkv_a["value"], x_b, mask)
            if self.mode == "side":
                cross_a, cross_b = layer_a.feed_forward_chunk(cross_a), layer_b.feed_forward_chunk(cross_b)
            elif self.mode == "mix":
                h_a = h_a + self.mix_gate * cross_a
                h_b = h_b + self.mix_gate * cross_b
        if self.mode == "stream":
            cross_a, cross_b = stream_a, stream_b
        return (
            self._finish(self.tower_a, h_a, cross_a, attention_mask),
            self._finish(self.tower_b, h_b, cross_b, attention_mask),
        )

    def _plain(self, tower, input_ids, attention_mask, token_type_ids) -> TowerOutput:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = tower(**kwargs)
        # The HF forward already ran the pooler (when the checkpoint has one): reuse it.
        return self._finish(tower, out.last_hidden_state, None, attention_mask, getattr(out, "pooler_output", None))

    def _finish(self, tower, last_hidden, cross, attention_mask, pooled: torch.Tensor | None = None) -> TowerOutput:
        pooler = pooler_of(tower)
        if pooled is None and pooler is not None:
            pooled = pooler(last_hidden)
        pooling = self.poolings[0] if tower is self.tower_a else self.poolings[1]
        return TowerOutput(
            embedding=pool(last_hidden, attention_mask, pooling),
            pooler=pooled,
            cross=pool(cross, attention_mask, pooling) if cross is not None else None,
        )
