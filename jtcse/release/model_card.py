"""The package's model card (README.md): its facts gathered in :class:`ModelCardData`, its text a Jinja2 template.

:func:`card_data` builds the one structure from the settings, the metrics, the package entries and the data
bundle (:func:`read_data_facts`: corpus size counted from the corpus actually used, licence notes read from the
bundle's ``MANIFEST.md``); :func:`render_model_card` fills ``jtcse/release/templates/model_card.md.j2`` with it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from jtcse.config import Settings
from jtcse.formats import SYMBOLIC_MODELS, describe_pooling, hub_model_id

log = logging.getLogger(__name__)

TEMPLATE = "model_card.md.j2"
#: The evaluation sets as Hugging Face datasets, for the card's ``model-index`` (same sources and test splits;
#: the scores follow the SentEval protocol, so STS12-16 pool their subsets: "all" aggregation).
MODEL_INDEX_DATASETS = {
    "sts12": ("STS12", "mteb/sts12-sts"),
    "sts13": ("STS13", "mteb/sts13-sts"),
    "sts14": ("STS14", "mteb/sts14-sts"),
    "sts15": ("STS15", "mteb/sts15-sts"),
    "sts16": ("STS16", "mteb/sts16-sts"),
    "stsb": ("STS Benchmark", "mteb/stsbenchmark-sts"),
    "sickr": ("SICK-R", "mteb/sickr-sts"),
}
#: How a licence note says that a source may not be used commercially.
_NON_COMMERCIAL = re.compile(r"non-commercial|\bBY-NC\b|\bNC\b", re.IGNORECASE)
PARAMS_SECTIONS = ("model", "data", "runtime", "pretrain", "train", "distill", "evaluate", "package")


# ------------------------------------------------------------------------------------------------ data bundle


@dataclass(frozen=True)
class DataFacts:
    """What the card says about the training data, read from the data bundle."""

    corpus: str  # the corpus file as params.yaml names it
    corpus_sentences: int | None  # sentences used (after data.max_sentences); None when the file was not found
    manifest_name: str  # the bundle's manifest, as the card names it (e.g. "MANIFEST.md")
    licence_notes: list[str] = field(default_factory=list)  # the manifest's "Licence notes" bullets
    corpus_licence: str | None = None  # the corpus row's "licence note" in the manifest's file table
    licences_copied: bool = False  # the package carries the licence texts (licenses/)

    @property
    def non_commercial(self) -> bool:
        """Some source forbids commercial use, or no licence note was found (then the card assumes the worst)."""
        notes = [*self.licence_notes, self.corpus_licence or ""]
        return not self.licence_notes or any(_NON_COMMERCIAL.search(note) for note in notes)


def _count_sentences(corpus: Path, max_sentences: int | None) -> int | None:
    if not corpus.is_file():
        log.warning("%s: corpus not found; the model card states no corpus size", corpus)
        return None
    with corpus.open("rb") as fh:
        count = sum(1 for line in fh if line.strip())
    return min(count, max_sentences) if max_sentences is not None else count


def _markdown_section(text: str, heading: str) -> list[str]:
    """The lines of the ``## <heading>...`` section (up to the next ``## ``); empty when there is none."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip().lower().startswith(heading.lower())
            continue
        if inside:
            lines.append(line)
    return lines


def _bullets(lines: list[str]) -> list[str]:
    """Markdown ``*``/``-`` list items, continuation lines joined to their item."""
    items: list[str] = []
    for line in lines:
        if re.match(r"[*-] ", line):
            items.append(line[2:].strip())
        elif line.strip() and items and line.startswith(" "):
            items[-1] += " " + line.strip()
    return items


def _file_table_cell(text: str, file_name: str, column: str) -> str | None:
    """The ``column`` cell of ``file_name``'s row in the manifest's markdown file table."""
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
        elif column in header and cells and cells[0].strip("`") == file_name and len(cells) == len(header):
            return cells[header.index(column)]
    return None


def read_data_facts(
    settings: Settings,
    *,
    manifest: str | Path | None = "data/MANIFEST.md",
    licenses: str | Path | None = "data/licenses",
) -> DataFacts:
    """Corpus size (counted in the corpus file, capped at data.max_sentences) and the licence notes of the data
    bundle's manifest; a missing manifest leaves the notes empty (the card then says so)."""
    corpus = Path(settings.data.corpus)
    facts: dict[str, Any] = {
        "corpus": str(settings.data.corpus),
        "corpus_sentences": _count_sentences(corpus, settings.data.max_sentences),
        "manifest_name": Path(manifest).name if manifest is not None else "MANIFEST.md",
        "licences_copied": licenses is not None and Path(licenses).is_dir(),
    }
    if manifest is None or not Path(manifest).is_file():
        log.warning("%s: data manifest not found; the model card lists no data licences", manifest)
        return DataFacts(**facts)
    manifest = Path(manifest)
    text = manifest.read_text(encoding="utf-8")
    facts["licence_notes"] = _bullets(_markdown_section(text, "Licence notes"))
    try:
        in_bundle = corpus.resolve().relative_to(manifest.resolve().parent).as_posix()
    except ValueError:  # a corpus outside the bundle has no row in its table
        in_bundle = None
    if in_bundle is not None:
        facts["corpus_licence"] = _file_table_cell(text, in_bundle, "licence note")
    return DataFacts(**facts)


# ------------------------------------------------------------------------------------------------ card data


@dataclass(frozen=True)
class TransferSection:
    folds: int
    subset_note: str
    table: str


@dataclass(frozen=True)
class ModelCardData:
    """Everything the model card states, gathered in one place (the template only lays it out)."""

    name: str
    version: str
    base: str  # hub id of a symbolic base, else model.base as given
    base_licence: str
    pooling: str
    pooled: str
    distilled: dict
    twin: dict
    front_matter: str
    sts_table: str
    comparisons: list[str]
    transfer: TransferSection | None
    eval_max_length: int
    seeds: tuple[int, int]
    student_init: str
    w_kl: float
    w_nce: float
    params_yaml: str
    data_version: str
    git_commit: str
    git_dirty: bool
    versions: list[str]
    hardware: str
    timing: list[tuple[str, str]]
    total_duration: str
    data: DataFacts

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def corpus_size(self) -> str:
        count = self.data.corpus_sentences
        return f"{count:,} sentences" if count is not None else "size not recorded"


def training_time(metrics_root: str | Path) -> tuple[dict[str, float], float | None]:
    """Seconds per stage from ``<metrics_root>/*/summary.json`` and their sum (None when none is recorded)."""
    per_stage: dict[str, float] = {}
    root = Path(metrics_root)
    for summary in sorted(root.glob("*/summary.json")) if root.is_dir() else []:
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("%s: unreadable; left out of the training time", summary)
            continue
        seconds = data.get("seconds", data.get("seconds_this_run")) if isinstance(data, dict) else None
        if isinstance(seconds, (int, float)):
            per_stage[summary.parent.name] = float(seconds)
    return per_stage, (sum(per_stage.values()) if per_stage else None)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _params_yaml(settings: Settings) -> str:
    dump = {name: getattr(settings, name).model_dump(mode="json") for name in PARAMS_SECTIONS}
    return yaml.safe_dump(dump, sort_keys=False, default_flow_style=False).rstrip()


def model_index(name: str, metrics: dict[str, float]) -> list[dict]:
    """The Hugging Face ``model-index`` results: one entry per STS test set, Spearman x 100 of cosine scores."""
    results = []
    for task, (label, dataset) in MODEL_INDEX_DATASETS.items():
        if task in metrics:
            results.append(
                {
                    "task": {"type": "semantic-similarity", "name": "Semantic Similarity"},
                    "dataset": {"name": f"{label} (test)", "type": dataset, "split": "test"},
                    "metrics": [
                        {
                            "type": "spearman_cosine",
                            "value": round(float(metrics[task]), 2),
                            "name": "Spearman (cosine) x 100",
                        }
                    ],
                }
            )
    return [{"name": name, "results": results}]


def _front_matter(name: str, hub_base: str | None, distilled_metrics: dict[str, float], non_commercial: bool) -> str:
    header = {
        "language": "en",
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "jtcse"],
        "license": "other",
        "license_name": "research-non-commercial" if non_commercial else "see-model-card-licences",
    }
    if hub_base:
        header["base_model"] = hub_base
    header["model-index"] = model_index(name, distilled_metrics)
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---"


def _comparisons(distilled_metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> list[str]:
    """One sentence per baseline: how the shipped model's average compares with it."""
    lines = []
    for label, scores in baselines.items():
        if "avg" in scores and "avg" in distilled_metrics:
            delta = distilled_metrics["avg"] - scores["avg"]
            verdict = "above" if delta > 0 else "below" if delta < 0 else "level with"
            lines.append(
                f"- JTCSE-D averages {distilled_metrics['avg']:.2f}, {abs(delta):.2f} points {verdict} "
                f"the {label} ({scores['avg']:.2f})."
            )
    return lines


def _transfer(settings: Settings, transfer_metrics: dict[str, dict[str, float]] | None) -> TransferSection | None:
    if not transfer_metrics:
        return None
    from jtcse.evaluation.transfer import format_transfer_table

    cap = settings.transfer.max_train
    subset = (
        f" Each probe learned from a stratified subset of at most {cap} examples (`transfer.max_train`, "
        "the CPU profile); dev and test sets are whole."
        if cap
        else ""
    )
    return TransferSection(settings.transfer.folds, subset, format_transfer_table(transfer_metrics))


def card_data(
    *,
    settings: Settings,
    twin_metrics: dict[str, float],
    distilled_metrics: dict[str, float],
    distilled: dict,
    twin: dict,
    provenance: dict,
    stage_seconds: dict[str, float],
    total_seconds: float | None,
    baselines: dict[str, dict[str, float]] | None = None,
    transfer_metrics: dict[str, dict[str, float]] | None = None,
    data_facts: DataFacts | None = None,
) -> ModelCardData:
    """The card's facts. ``baselines``: label -> scores of the untrained base (e.g. per pooling);
    ``transfer_metrics``: label -> SentEval transfer scores; ``data_facts``: default read from the bundle that
    params.yaml names (:func:`read_data_facts`)."""
    from jtcse.evaluation.sts import format_table

    data_facts = data_facts if data_facts is not None else read_data_facts(settings)
    base = hub_model_id(settings.model.base)
    # The hub's base_model field takes a hub id ("owner/name"), never a local path.
    hub_base = base if re.fullmatch(r"[\w.-]+/[\w.-]+", base) and not Path(base).exists() else None
    symbolic = SYMBOLIC_MODELS.get(settings.model.base)
    base_licence = (
        f"the base checkpoint's licence ({base.rsplit('/', 1)[-1]}: {symbolic.licence})"
        if symbolic
        else f"the base checkpoint's (`{base}`) licence"
    )
    pooling = distilled["pooling"]
    baselines = baselines or {}
    table = format_table(
        {
            **{f"{label} (zero-shot)": scores for label, scores in baselines.items()},
            f"JTCSE twin ({twin_description(twin)})": twin_metrics,
            "JTCSE-D (distilled, this model)": distilled_metrics,
        }
    )
    versions = provenance["versions"]
    name, version = settings.package.name, settings.package.version
    return ModelCardData(
        name=name,
        version=version,
        base=base,
        base_licence=base_licence,
        pooling=pooling,
        pooled="CLS token state (before the BERT pooler)" if pooling == "cls" else "mean of the token states",
        distilled=distilled,
        twin=twin | {"pooling_words": describe_pooling(twin["pooling"])},
        front_matter=_front_matter(f"{name}-{version}", hub_base, distilled_metrics, data_facts.non_commercial),
        sts_table=table,
        comparisons=_comparisons(distilled_metrics, baselines),
        transfer=_transfer(settings, transfer_metrics),
        eval_max_length=settings.evaluate.max_length,
        seeds=(settings.pretrain.tower_a.seed, settings.pretrain.tower_b.seed),
        student_init=settings.distill.student_init,
        w_kl=settings.distill.w_kl,
        w_nce=settings.distill.w_nce,
        params_yaml=_params_yaml(settings),
        data_version=provenance["data_version"],
        git_commit=provenance["git_commit"],
        git_dirty=bool(provenance.get("git_dirty")),
        versions=[versions.get(k, "?") for k in ("jtcse", "pytorch", "transformers")],
        hardware=provenance["hardware"],
        timing=[(stage, _duration(seconds)) for stage, seconds in stage_seconds.items()],
        total_duration=_duration(total_seconds or 0.0),
        data=data_facts,
    )


# ------------------------------------------------------------------------------------------------ text


@cache
def _template():
    import jinja2

    source = resources.files("jtcse.release").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    return env.from_string(source)


def render_model_card(data: ModelCardData) -> str:
    """The card's markdown: the template filled with ``data`` (its fields and properties)."""
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    return _template().render(**fields, label=data.label, corpus_size=data.corpus_size)


def model_card(**kwargs) -> str:
    """The package's README.md from the keyword arguments of :func:`card_data`."""
    return render_model_card(card_data(**kwargs))


def twin_description(twin: dict) -> str:
    """How the twin's vector is made, in words: 'sum of both towers', 'normalised concat of both towers'."""
    return f"{'normalised ' if twin.get('normalize') else ''}{twin['combine']} of both towers"
