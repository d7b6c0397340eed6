"""The model card: one data structure (ModelCardData) laid out by a Jinja2 template; data facts read from the
data bundle (corpus size counted, licence notes quoted from its MANIFEST.md), never hard-coded."""

from __future__ import annotations

import pytest

MANIFEST = """\
# Tiny bundle

## File table

| file | rows | licence note | sha256 |
|---|---|---|---|
| `corpus/train.txt` | 5 | mixed; contains CC BY-NC-SA text | abc |
| `sts/stsb.dev.tsv` | 3 | CC BY-SA 4.0 | def |

## Licence notes (copies in `licenses/`)

* **Alpha** (`licenses/alpha.txt`): CC BY-SA 4.0.
* **Beta** (`licenses/beta.txt`): CC BY-NC-SA 3.0,
  non-commercial use only.

## How each output was built

* not a licence note
"""

CARD_ARGS = dict(
    twin_metrics={"avg": 70.0},
    distilled_metrics={"sts12": 71.5, "avg": 71.0},
    distilled={"pooling": "cls", "dimension": 384, "max_seq_length": 128},
    twin={"combine": "sum", "pooling": "cls", "dimension": 384},
    provenance={
        "data_version": "abc.dir",
        "git_commit": "deadbeef",
        "git_dirty": True,
        "hardware": "CPU: test",
        "versions": {"jtcse": "0.1.0", "pytorch": "2.x"},
    },
    stage_seconds={"pretrain_a": 61.0, "train": 3725.0},
    total_seconds=3786.0,
)


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "data"
    (root / "corpus").mkdir(parents=True)
    (root / "licenses").mkdir()
    (root / "corpus" / "train.txt").write_text("".join(f"Sentence number {i}.\n" for i in range(5)))
    (root / "MANIFEST.md").write_text(MANIFEST)
    return root


def settings_for(bundle, **data):
    from jtcse.config import settings_from_dict

    return settings_from_dict(
        {
            "model": {"base": "minilm"},
            "package": {"name": "tiny", "version": "0.1"},
            "data": {"corpus": str(bundle / "corpus" / "train.txt"), **data},
        }
    )


def test_data_facts_are_read_from_the_bundle(bundle):
    from jtcse.release.model_card import read_data_facts

    facts = read_data_facts(settings_for(bundle), manifest=bundle / "MANIFEST.md", licenses=bundle / "licenses")
    assert facts.corpus_sentences == 5 and facts.manifest_name == "MANIFEST.md" and facts.licences_copied
    assert facts.licence_notes == [
        "**Alpha** (`licenses/alpha.txt`): CC BY-SA 4.0.",
        "**Beta** (`licenses/beta.txt`): CC BY-NC-SA 3.0, non-commercial use only.",
    ]
    assert facts.corpus_licence == "mixed; contains CC BY-NC-SA text" and facts.non_commercial
    capped = read_data_facts(settings_for(bundle, max_sentences=3), manifest=bundle / "MANIFEST.md", licenses=None)
    assert capped.corpus_sentences == 3 and not capped.licences_copied


def test_card_sections_come_from_the_data_and_the_template(bundle):
    from jtcse.release.model_card import card_data, read_data_facts, render_model_card

    settings = settings_for(bundle)
    facts = read_data_facts(settings, manifest=bundle / "MANIFEST.md", licenses=bundle / "licenses")
    data = card_data(settings=settings, data_facts=facts, **CARD_ARGS)
    assert (data.base, data.label, data.corpus_size) == (
        "sentence-transformers/all-MiniLM-L6-v2",
        "tiny-0.1",
        "5 sentences",
    )
    card = render_model_card(data)
    assert card.startswith("---\nlanguage: en\n") and "\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n" in card
    assert "license_name: research-non-commercial\n" in card
    assert "\n# tiny 0.1\n" in card and 'model = SentenceTransformer("tiny-0.1/distilled")' in card
    assert (
        "| stage | time |\n|---|---:|\n| pretrain_a | 1 min 01 s |\n| train | 1 h 02 min |\n"
        "| **total** | **1 h 03 min** |\n\n## Intended use"
    ) in card
    assert "| code (git commit) | `deadbeef` (built from a working tree with uncommitted changes) |" in card
    assert "| jtcse / torch / transformers | 0.1.0 / 2.x / ? |" in card
    assert "- Trained without labels on a small corpus (5 sentences), not the paper's Wiki1M: the\n" in card
    corpus = bundle / "corpus" / "train.txt"
    licences = card[card.index("## Licences\n") : card.index("## Files\n")]
    assert (
        licences
        == f"""## Licences

The model was trained on `{corpus}` (5 sentences) and selected/evaluated on STS12-16, STS-B and
SICK-R. Some of these sources are licensed for **research / non-commercial use only**.

Licence note of the corpus in the data bundle's file table: mixed; contains CC BY-NC-SA text.

Licence notes of the data bundle (`MANIFEST.md`, "Licence notes"; the licence texts are in `licenses/`):

* **Alpha** (`licenses/alpha.txt`): CC BY-SA 4.0.
* **Beta** (`licenses/beta.txt`): CC BY-NC-SA 3.0, non-commercial use only.

Treat this model as **research / non-commercial use only**.
Provenance, counts and caveats of the data are in the data bundle's `MANIFEST.md`. The model's own code
is Apache-2.0; the base checkpoint's licence (all-MiniLM-L6-v2: Apache-2.0) also applies to the weights.

"""
    )
    assert "43,704" not in card and "Not for commercial use (see\nLicences).\n\n## Limitations" in card


def test_a_bundle_without_restrictions_or_manifest_changes_only_the_licence_facts(bundle):
    from jtcse.release.model_card import model_card, read_data_facts

    settings = settings_for(bundle)
    (bundle / "MANIFEST.md").write_text("## Licence notes\n\n* **Alpha**: CC BY-SA 4.0.\n")
    open_card = model_card(
        settings=settings,
        data_facts=read_data_facts(settings, manifest=bundle / "MANIFEST.md", licenses=None),
        **CARD_ARGS,
    )
    assert "non-commercial" not in open_card and "license_name: see-model-card-licences\n" in open_card
    assert "the licence texts are in the data bundle's `licenses/` folder" in open_card
    assert "method.\n\n## Limitations" in open_card
    missing = model_card(
        settings=settings, data_facts=read_data_facts(settings, manifest=bundle / "nope.md"), **CARD_ARGS
    )
    assert 'No licence notes were found (no "Licence notes" section in `nope.md`)' in missing
    assert "Treat this model as **research / non-commercial use only**." in missing  # unknown: assume the worst


def test_model_card_names_the_hub_base_model_but_never_a_local_path(bundle, tmp_path):
    from jtcse.release.model_card import model_card, read_data_facts

    minilm = settings_for(bundle)
    facts = read_data_facts(minilm, manifest=bundle / "MANIFEST.md")
    card = model_card(settings=minilm, data_facts=facts, **{**CARD_ARGS, "stage_seconds": {}, "total_seconds": None})
    assert "\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n" in card and "Not recorded" in card
    local = minilm.model_copy(deep=True)
    local.model.base = str(tmp_path)
    card = model_card(settings=local, data_facts=facts, **CARD_ARGS)
    assert "base_model:" not in card and f"the base checkpoint's (`{tmp_path}`) licence also applies" in card


def test_model_card_carries_the_transfer_table_only_when_given(bundle):
    from jtcse.release.model_card import model_card, read_data_facts

    settings = settings_for(bundle)
    settings.transfer.max_train = 2000
    facts = read_data_facts(settings, manifest=bundle / "MANIFEST.md")
    transfer = {"JTCSE-D (distilled, this model)": {"mr": 75.5, "trec": 80.25, "avg": 77.875}}
    card = model_card(settings=settings, transfer_metrics=transfer, data_facts=facts, **CARD_ARGS)
    assert (
        "| model | mr | trec | avg |" in card and "| JTCSE-D (distilled, this model) | 75.50 | 80.25 | 77.88 |" in card
    )
    assert "at most 2000 examples" in card
    assert "SentEval transfer" not in model_card(settings=settings, data_facts=facts, **CARD_ARGS)


def test_the_template_ships_as_package_data():
    import tomllib
    from importlib import resources

    from tests.conftest import REPO

    assert resources.files("jtcse.release").joinpath("templates", "model_card.md.j2").is_file()
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "templates/*.j2" in config["tool"]["setuptools"]["package-data"]["jtcse.release"]
    assert any(dep.startswith("jinja2") for dep in config["project"]["dependencies"])
