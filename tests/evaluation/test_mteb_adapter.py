"""The MTEB adapter: mteb's own evaluation loop over a task defined here, on data the test writes."""

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import build_tiny_model, write_sts

# CI installs the [mteb] extra and sets JTCSE_REQUIRE_MTEB=1, so there these tests fail instead of skipping.
if os.environ.get("JTCSE_REQUIRE_MTEB") == "1":
    import mteb  # noqa: F401
else:
    pytest.importorskip("mteb", reason="the optional [mteb] extra is not installed")

PAIRS = [
    ("A man is playing a guitar.", "Someone plays a guitar.", 4.6),
    ("A woman is slicing an onion.", "A woman cuts an onion.", 4.2),
    ("A cat sits on the mat.", "The stock market fell sharply today.", 0.1),
    ("Two dogs run in a field.", "Dogs are running outside.", 3.8),
    ("The child is reading a book.", "A kid reads.", 3.5),
    ("He drives a red car.", "The weather is cold in winter.", 0.3),
    ("A band performs on stage.", "Musicians play a concert.", 4.0),
    ("She is cooking pasta.", "A man repairs a bicycle.", 0.5),
    ("People are walking on the beach.", "A group walks along the shore.", 4.1),
    ("The plane takes off.", "An aircraft departs.", 4.4),
    ("A boy kicks a ball.", "The ocean is very deep.", 0.2),
    ("An old man sleeps on a bench.", "A man is resting on a bench.", 3.6),
]


def local_sts_task(tsv):
    """An mteb STS task over a TSV the test wrote (no hub, no download)."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    from jtcse.data.readers import read_sts

    class JtcseLocalSTS(AbsTaskSTS):
        metadata = TaskMetadata(
            name="JtcseLocalSTS",
            type="STS",
            main_score="cosine_spearman",
            description="Twelve sentence pairs written by the jtcse test suite.",
            reference="https://github.com/embeddings-benchmark/mteb",
            dataset={"path": str(tsv), "revision": "local"},
            category="t2t",
            eval_splits=["test"],
            eval_langs=["eng-Latn"],
            date=("2026-12-01", "2026-12-01"),
            dialect=["Written"],
            domains=[],
            task_subtypes=[],
            license="cc-by-4.0",
            annotations_creators="derived",
            modalities=["text"],
            sample_creation="found",
            bibtex_citation="",
        )
        min_score, max_score = 0, 5

        def load_data(self, **kwargs):
            pairs = read_sts(tsv)
            self.dataset = DatasetDict(
                {
                    "test": Dataset.from_dict(
                        {"sentence1": pairs.sentence1, "sentence2": pairs.sentence2, "score": pairs.scores}
                    )
                }
            )
            self.data_loaded = True

    return JtcseLocalSTS()


@pytest.fixture(scope="module")
def tiny_twin(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("twin")
    shutil.copytree(tiny_bert, root / "tower_a")
    build_tiny_model(root / "tower_b", seed=1)
    (root / "twin.json").write_text(
        json.dumps(
            {
                "format": "jtcse-twin",
                "format_version": 1,
                "towers": ["tower_a", "tower_b"],
                "pooling": "cls",
                "combine": "sum",
            }
        )
    )
    return root


def test_twin_vectors_through_the_wrapper_equal_jtcse_load_encode(tiny_twin):
    from torch.utils.data import DataLoader

    import jtcse
    from jtcse.evaluation.mteb_adapter import MTEBEncoder

    texts = [s for a, b, _ in PAIRS for s in (a, b)]
    wrapper = MTEBEncoder.from_path(tiny_twin, device="cpu", batch_size=5)
    loader = DataLoader(
        [{"text": t} for t in texts], batch_size=7, collate_fn=lambda rows: {"text": [r["text"] for r in rows]}
    )
    via_mteb = wrapper.encode(loader, task_metadata=None, hf_split="test", hf_subset="default")
    direct = jtcse.load(tiny_twin, device="cpu").encode(texts)
    assert via_mteb.shape == (len(texts), 32)
    np.testing.assert_allclose(via_mteb, direct, rtol=0, atol=1e-6)
    tower_a = jtcse.load(tiny_twin / "tower_a", device="cpu").encode(texts)
    assert np.abs(via_mteb - tower_a).max() > 1e-3  # really the twin's sum, not one tower
    meta = wrapper.mteb_model_meta
    assert meta.name == f"jtcse/{tiny_twin.name}" and meta.embed_dim == 32 and len(meta.revision) == 12


def test_mteb_evaluates_a_local_task_end_to_end_and_matches_jtcse_sts(tiny_twin, tmp_path):
    from jtcse.api import load
    from jtcse.evaluation.mteb_adapter import MTEBEncoder, run_mteb
    from jtcse.evaluation.sts import STSEvaluator

    tsv = write_sts(tmp_path / "local.tsv", [(a, b, s, "local") for a, b, s in PAIRS])
    wrapper = MTEBEncoder.from_path(tiny_twin, device="cpu", name="tiny-twin")
    scores = run_mteb(wrapper, [local_sts_task(tsv)], tmp_path / "results")
    ours = STSEvaluator(tmp_path, {"local": "local.tsv"})(load(tiny_twin, device="cpu"))["local"]
    assert scores == {"JtcseLocalSTS": pytest.approx(ours, abs=1e-4)}
    saved = list((tmp_path / "results").rglob("JtcseLocalSTS.json"))
    assert len(saved) == 1 and "tiny-twin" in str(saved[0])
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert (
        summary["model"] == "jtcse/tiny-twin" and summary["main_score_x100"]["JtcseLocalSTS"] == scores["JtcseLocalSTS"]
    )


def test_cli_unknown_task_is_one_line_exit_2(tiny_bert, tmp_path, capsys):
    from jtcse.cli import main

    rc = main(["mteb", "--model", str(tiny_bert), "--tasks", "NoSuchTask123", "--output", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jtcse: error: unknown MTEB task(s) NoSuchTask123") and "\n" not in err
    assert not (tmp_path / "out").exists()
