"""The FLOP counts of the speed benchmark: FlopCounterMode (with the CPU flash-attention kernels mapped) against
a count by hand from the shapes (bench/speed_flops.py's formulas), on a tiny BERT and the bridged twin."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, BertModel

from bench import speed_flops
from jtcse.modeling.twin import BridgedTwin
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("flops_bert"), layers=4)


def _batch(rows: int = 6, length: int = 10):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, 7:] = 0  # padding does not change the work: every row is computed at full length
    return ids, mask


def _naive_forward(config, rows: int, length: int) -> int:
    """Every matrix multiply of a BERT forward written out, independently of bench/speed_flops.py."""
    h, i, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    tokens, head_dim = rows * length, config.hidden_size // config.num_attention_heads
    mm = lambda m, k, n: 2 * m * k * n  # noqa: E731
    per_layer = (
        3 * mm(tokens, h, h)  # query, key, value
        + rows * heads * mm(length, head_dim, length)  # Q K^T
        + rows * heads * mm(length, length, head_dim)  # P V
        + mm(tokens, h, h)  # attention output dense
        + mm(tokens, h, i)
        + mm(tokens, i, h)  # feed-forward
    )
    return config.num_hidden_layers * per_layer + mm(rows, h, h)  # + the pooler on the first token


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_counter_matches_a_naive_count_of_a_tiny_bert_step(tiny_dir, attn):
    torch.manual_seed(0)
    model = BertModel.from_pretrained(tiny_dir, attn_implementation=attn).train()
    ids, mask = _batch()
    config = AutoConfig.from_pretrained(tiny_dir)
    flops = speed_flops.step_flops(
        lambda: model(input_ids=ids, attention_mask=mask).pooler_output.square().sum(), lambda loss: loss.backward()
    )
    naive = _naive_forward(config, 6, 10)
    assert flops["forward"] == naive == speed_flops.tower_forward_flops(config, 6, 10)
    # backward: a gradient for the input and one for the weight of every product (the first layer's input is
    # the embeddings' LayerNorm output, which needs one too): twice the forward, up to the pooler's
    assert flops["backward"] == pytest.approx(2 * naive, rel=0.02)


def test_counter_counts_cpu_flash_attention():
    q = torch.randn(2, 3, 8, 4, requires_grad=True)
    flops = speed_flops.step_flops(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(2, 1, 1, 8)).sum(),
        lambda loss: loss.backward(),
    )
    assert flops["forward"] == 2 * (2 * 2 * 3 * 8 * 8 * 4)  # Q K^T and P V
    assert flops["backward"] > flops["forward"]


@pytest.mark.parametrize("mode", ["stream", "side", "mix"])
def test_twin_formula_matches_the_counter(tiny_dir, mode):
    towers = [BertModel.from_pretrained(tiny_dir, attn_implementation="eager") for _ in range(2)]
    twin = BridgedTwin(*towers, num_ca_layers=2, mode=mode)
    ids, mask = _batch()
    counted, _ = speed_flops.count(lambda: twin(ids, mask))
    config = towers[0].config
    assert counted == speed_flops.twin_forward_flops(config, 6, 10, twin.bridged, mode)
    assert counted > 2 * _naive_forward(config, 6, 10)  # the bridge's work comes on top of two towers


def test_gemm_rates_report_a_peak():
    rates = speed_flops.gemm_rates(speed_flops.gemm_shapes(64, 32, 64, square=64), seconds=0.05, repeats=2)
    assert rates["peak_gflops"] == max(rates["gflops"].values()) > 0
    assert rates["peak_shape"] in rates["gflops"] and len(rates["gflops"]) == 4
