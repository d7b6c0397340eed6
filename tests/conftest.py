"""Shared fixtures: tiny models built locally (no hub), a small STS fixture, the data bundle."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.stop_on_sigterm import pytest_configure  # noqa: E402, F401  (a hook: SIGTERM tears the session down)

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The DVC-pulled data/ (make test pulls it), else the plain copy beside the checkout."""
    for candidate in (REPO / "data", REPO.parent / "shared" / "data"):
        if (candidate / "sts" / "stsb.dev.tsv").is_file():
            return candidate
    pytest.skip("data bundle not found: run `dvc pull`")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_root()


@pytest.fixture(scope="session")
def sample_corpus(data_dir) -> Path:
    return data_dir / "corpus" / "sample.txt"


def build_tiny_model(directory: Path, *, arch: str = "bert", layers: int = 4, seed: int = 0) -> Path:
    """A 32-wide encoder with the MiniLM uncased vocabulary: real tokenizer, random weights, seconds to train."""
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

    from jtcse.formats import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    common = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=132,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    torch.manual_seed(seed)
    if arch == "bert":
        model = BertModel(BertConfig(**common), add_pooling_layer=True)
    else:
        model = RobertaModel(
            RobertaConfig(**common, pad_token_id=tokenizer.pad_token_id, type_vocab_size=1), add_pooling_layer=True
        )
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_roberta"), arch="roberta")


def write_sts(path: Path, rows: list[tuple[str, str, float, str]]) -> Path:
    lines = ["sentence1\tsentence2\tscore\tsubset"] + [f"{a}\t{b}\t{s}\t{sub}" for a, b, s, sub in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_sts_dir(tmp_path_factory, data_dir) -> Path:
    """The first 40 pairs of every evaluation file: the real format at a size tiny models evaluate in a second."""
    from jtcse.evaluation.sts import DEV_TASKS, STS_TASKS

    out = tmp_path_factory.mktemp("sts")
    for name in (*STS_TASKS.values(), *DEV_TASKS.values()):
        lines = (data_dir / "sts" / name).read_text(encoding="utf-8").splitlines()
        (out / name).write_text("\n".join(lines[:41]) + "\n", encoding="utf-8")
    return out


@pytest.fixture()
def tiny_settings(tiny_bert, small_sts_dir, sample_corpus):
    """Settings for seconds-long runs of every stage on the tiny model."""
    from jtcse.config import settings_from_dict

    stage = {"steps": 6, "batch_size": 8, "lr": 1e-3, "eval_every": 3, "checkpoint_every": 3, "keep_checkpoints": 3}
    return settings_from_dict(
        {
            "model": {"base": str(tiny_bert), "max_length": 24, "attn_implementation": "eager"},
            "runtime": {"threads": 1},  # a 32-wide model is all overhead: more threads only add synchronisation
            "data": {"corpus": str(sample_corpus), "sts_dir": str(small_sts_dir), "max_sentences": 200},
            "pretrain": stage,
            "train": {**stage, "cross_attention": {"num_layers": 2}},
            "distill": stage,
            "evaluate": {"batch_size": 64, "max_length": 32},
        }
    )


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server (and an isolated PREFECT_HOME) for the whole test session."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield home


def write_small_transfer(out: Path, source: Path, lines: int = 40) -> Path:
    """The first ``lines`` lines of every SentEval transfer file (MRPC keeps its header): the real formats, tiny."""
    from jtcse.evaluation.transfer import TRANSFER_FILES

    for files in TRANSFER_FILES.values():
        for name in files:
            raw = (source / name).read_bytes().split(b"\n")
            keep = raw[: lines + 1] if name.startswith("MRPC/") else raw[:lines]
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\n".join(keep) + b"\n")
    return out


@pytest.fixture(scope="session")
def small_transfer_dir(tmp_path_factory, data_dir) -> Path:
    return write_small_transfer(tmp_path_factory.mktemp("transfer"), data_dir / "transfer")
