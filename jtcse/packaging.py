"""Shipping a trained model: one self-describing, checksummed folder (and a tarball of it) per release.

``jtcse package`` turns the pipeline's outputs into ``<output-dir>/<name>-<version>/``::

    distilled/            JTCSE-D as a standard sentence-transformers folder (HF weights at the root,
                          modules.json = Transformer + Pooling): SentenceTransformer(path) and AutoModel load it
    twin/                 both towers + twin.json (sum of CLS at inference), opened by jtcse.load(path)
    licenses/             licence texts of the training/evaluation data (copied from data/licenses)
    jtcse_package.json    name, version, default model ("distilled"), what each model is
    README.md             model card: STS results, settings, data version, commit, training time, licences
    SHA256SUMS            every other file, `sha256sum -c` format; jtcse.load refuses a modified package

``jtcse_package.json`` also records the SHA256 of every model file, so a file edited together with SHA256SUMS
is still refused (see :func:`jtcse.api.verify_checksums`).

Folder and tarball are one transaction: both are built in temporary siblings; then the release manifest
``<name>-<version>.release.json`` (beside them) is removed, the folder is swapped in (``atomic_directory``), the
tarball renamed into place, and a new release manifest naming both (with their digests) is written last. A kill
at any point leaves either the previous release, or a folder and tarball without a matching release manifest,
which :func:`release_problems` reports and the next ``jtcse package`` repairs (it rebuilds both, and first removes
the ``.tmp``/``.old`` leftovers of the killed run).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from jtcse.api import verify_checksums
from jtcse.config import Settings
from jtcse.errors import InputNotFoundError, UserError
from jtcse.formats import CHECKSUMS, PACKAGE_MANIFEST, TWIN_MANIFEST, hub_model_id, sha256_file
from jtcse.io import atomic_directory, atomic_rename, atomic_write_bytes, atomic_write_json, clean_leftovers, fsync_dir, fsync_file

log = logging.getLogger(__name__)

PACKAGE_FORMAT = "jtcse-package"
PACKAGE_FORMAT_VERSION = 2  # 2: the manifest records every model file's SHA256 ("files")
RELEASE_SUFFIX = ".release.json"
RELEASE_FORMAT = "jtcse-release"
POOLING_DIR = "1_Pooling"
#: sentence-transformers metadata that the export writes itself (never copied from the source folder).
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md")
#: Pickled weights or training state: never shipped (a loader would have to unpickle them).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: Sentences of the post-build self-check (every packaged model must load and give the expected vectors).
PROBE = ["A man is playing a guitar.", "The weather is lovely today!", "x"]
STAGE_METRICS = ("pretrain_a", "pretrain_b", "train", "distill")
#: The evaluation sets as Hugging Face datasets, for the card's ``model-index`` (same sources and test splits;
#: the scores follow the SentEval protocol, so STS12-16 pool their subsets: "all" aggregation).
MODEL_INDEX_DATASETS = {
    "sts12": ("STS12", "mteb/sts12-sts"), "sts13": ("STS13", "mteb/sts13-sts"), "sts14": ("STS14", "mteb/sts14-sts"),
    "sts15": ("STS15", "mteb/sts15-sts"), "sts16": ("STS16", "mteb/sts16-sts"),
    "stsb": ("STS Benchmark", "mteb/stsbenchmark-sts"), "sickr": ("SICK-R", "mteb/sickr-sts"),
}

DATA_LICENCES = """\
The model was trained on `data/corpus/train.txt` (43,704 unlabelled English sentences from a mixed-domain
bundle) and selected/evaluated on STS12-16, STS-B and SICK-R. Several of these sources are licensed for
**research / non-commercial use only**, and the corpus itself contains sentences from them:

| source | licence |
|---|---|
| SICK (train sentences in the corpus; SICK-R test in the evaluation) | CC BY-NC-SA 3.0 Unported (University of Trento): **non-commercial** |
| MSR Paraphrase corpus (MSRP/MRPC train sentences in the corpus; MSRpar in STS12) | Microsoft Research Shared Source licence: **non-commercial**, derivatives under the same terms, keep notices |
| STS16 plagiarism subset (evaluation) | CC BY-NC-SA 2.0 UK (Clough & Stevenson): **non-commercial** |
| STS Benchmark | scores CC BY-SA 4.0; text keeps each origin's licence (MSR terms, EMM, PASCAL VOC CC BY-SA, SNLI CC BY-SA 4.0, Stack Exchange CC BY-SA 3.0) |
| STS12-15, STS16 other subsets | per-source terms (MSR licence, CC BY-SA 3.0 Stack Exchange with attribution, CC BY 4.0 post-editing, EMM acknowledgement) |
| Wikipedia / CK12 (AI2 hypev), SNLI, MCTest, Argus, TREC answer selection (corpus) | CC BY-SA; CC BY-SA 4.0; MSR-LA (modified derivative, see data MANIFEST notice); research-only (no licence stated); public domain |

Treat this model as **research / non-commercial use only**. The licence texts are in `licenses/`; provenance,
counts and the full notes are in the data bundle's `MANIFEST.md` ("Licence notes" and "Caveats"). The model's
own code is Apache-2.0; the base checkpoint's licence (all-MiniLM-L6-v2: Apache-2.0) also applies to the weights.
"""


@dataclass(frozen=True)
class PackageResult:
    path: Path
    tarball: Path
    files: int
    release: Path | None = None


# ------------------------------------------------------------------------------------------------ export


def _hf_root(source: Path) -> Path:
    from jtcse.modeling.towers import transformer_dir

    return Path(transformer_dir(str(source)))


def _hidden_size(model_dir: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(model_dir)).hidden_size)


def export_sentence_transformer(source: str | Path, target: str | Path, *, pooling: str, max_seq_length: int,
                                model_card: str | None = None) -> dict:
    """Write ``source`` (an HF encoder folder, or a sentence-transformers one) to ``target`` in the portable
    sentence-transformers layout: HF files at the root, ``modules.json`` = Transformer (path "") + Pooling.

    Only the classic module names (``sentence_transformers.models.*``) and config keys are used, so every
    sentence-transformers version from 2.x to 6.x loads it without custom code or ``trust_remote_code``.
    Returns the model's entry for ``jtcse_package.json``.
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    source, target = Path(source), Path(target)
    root = _hf_root(source)
    if not (root / "config.json").is_file():
        raise UserError(f"{source}: no config.json; not a Hugging Face model folder")
    if not list(root.glob("*.safetensors")):
        raise UserError(f"{source}: no *.safetensors weights (pickled weights are not packaged)")
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(root.iterdir()):
        if path.is_file() and path.name not in ST_FILES and path.suffix not in PICKLE_SUFFIXES:
            shutil.copyfile(path, target / path.name)
    dimension = _hidden_size(target)
    (target / POOLING_DIR).mkdir(exist_ok=True)
    _write_json(target / POOLING_DIR / "config.json", {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    _write_json(target / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ])
    # The tokenizer's own lower-casing (uncased vocabularies) still applies; this flag would add a second one.
    _write_json(target / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(target / "config_sentence_transformers.json", {
        # No "sentence_transformers" version: it is not written by that library, and a version newer than the
        # reader's would only trigger a warning.
        "__version__": _versions(),
        "model_type": "SentenceTransformer",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    if model_card is not None:
        (target / "README.md").write_text(model_card, encoding="utf-8")
    return {"path": target.name, "kind": "tower", "format": "sentence-transformers", "pooling": pooling,
            "dimension": dimension, "max_seq_length": max_seq_length}


def copy_twin(source: str | Path, target: str | Path) -> dict:
    """Copy a twin folder (tower_a/, tower_b/, twin.json); returns its entry for ``jtcse_package.json``."""
    source, target = Path(source), Path(target)
    manifest_path = source / TWIN_MANIFEST
    if not manifest_path.is_file():
        raise InputNotFoundError(f"{source}: no {TWIN_MANIFEST}; not a twin folder (expected the output of `jtcse train`)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for tower in manifest["towers"]:
        if not list((source / tower).glob("*.safetensors")):
            raise UserError(f"{source / tower}: no *.safetensors weights")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", *(f"*{s}" for s in PICKLE_SUFFIXES)))
    dimension = _hidden_size(target / manifest["towers"][0])
    if manifest["combine"] == "concat":
        dimension += _hidden_size(target / manifest["towers"][1])
    return {"path": target.name, "kind": "twin", "format": "jtcse-twin", "towers": manifest["towers"],
            "pooling": manifest["pooling"], "combine": manifest["combine"], "dimension": dimension}


# ------------------------------------------------------------------------------------------------ integrity


def write_checksums(directory: str | Path) -> Path:
    """SHA256SUMS over every file below ``directory``, sorted, in ``sha256sum`` format (``sha256sum -c`` checks it)."""
    directory = Path(directory)
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.name != CHECKSUMS)
    for name in names:
        if any(c in name for c in "\\\n\r"):
            raise ValueError(f"{name}: file names with backslashes or newlines cannot be listed in {CHECKSUMS}")
    lines = [f"{sha256_file(directory / name)}  {name}\n" for name in names]
    path = directory / CHECKSUMS
    path.write_text("".join(lines), encoding="utf-8")
    return path


def file_digests(directory: str | Path) -> dict[str, str]:
    """SHA256 of every file below ``directory`` (but the manifest and SHA256SUMS): recorded in the manifest."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in (CHECKSUMS, PACKAGE_MANIFEST)}


def release_path(output_dir: str | Path, label: str) -> Path:
    return Path(output_dir) / f"{label}{RELEASE_SUFFIX}"


def write_release(package_path: Path, tarball: Path, release: Path) -> None:
    """The release manifest, written last: it names the folder and the tarball that belong together."""
    atomic_write_json(release, {
        "format": RELEASE_FORMAT, "folder": package_path.name, "tarball": tarball.name,
        "folder_sha256sums": sha256_file(package_path / CHECKSUMS), "tarball_sha256": sha256_file(tarball),
    })


def _restore_release(release: Path, old_release: bytes | None, output_dir: Path, label: str) -> None:
    """After a failed build, put the previous release manifest back if it still tells the truth."""
    if old_release is None or release.exists():
        return
    atomic_write_bytes(release, old_release)
    if release_problems(output_dir, label):  # folder or tarball changed already: the next run rebuilds both
        release.unlink(missing_ok=True)


def release_problems(output_dir: str | Path, label: str) -> list[str]:
    """Why ``<output_dir>/<label>`` + ``.tar.gz`` are not one complete release (empty list: they are)."""
    output_dir = Path(output_dir)
    package_path, tarball, release = output_dir / label, output_dir / f"{label}.tar.gz", release_path(output_dir, label)
    if not release.is_file():
        return [f"{release.name} is missing (a `jtcse package` run was interrupted)"]
    try:
        record = json.loads(release.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return [f"{release.name} is unreadable ({err})"]
    problems = []
    if not (package_path / CHECKSUMS).is_file():
        problems.append(f"{package_path.name}/{CHECKSUMS} is missing")
    elif sha256_file(package_path / CHECKSUMS) != record.get("folder_sha256sums"):
        problems.append(f"{package_path.name} is not the folder {release.name} names")
    if not tarball.is_file():
        problems.append(f"{tarball.name} is missing")
    elif sha256_file(tarball) != record.get("tarball_sha256"):
        problems.append(f"{tarball.name} is not the tarball {release.name} names")
    return problems


def write_tarball(directory: str | Path, destination: str | Path, arcname: str) -> Path:
    """A reproducible .tar.gz of ``directory`` (sorted, fixed times/owners) at a temporary sibling of
    ``destination``; the caller renames it into place. Returns the temporary path."""
    directory, destination = Path(directory), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

    def member(path: Path, name: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
        if path.is_dir():
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size, info.mode = path.stat().st_size, 0o644
        return info

    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=mtime,
                                                       compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(member(directory, arcname))
            for path in sorted(directory.rglob("*"), key=lambda p: p.relative_to(directory).as_posix()):
                name = f"{arcname}/{path.relative_to(directory).as_posix()}"
                if path.is_dir():
                    tar.addfile(member(path, name))
                else:
                    with path.open("rb") as fh:
                        tar.addfile(member(path, name), fh)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a release is readable by everyone
        fsync_file(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


# ------------------------------------------------------------------------------------------------ model card


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number in strict JSON")


def read_metrics(path: str | Path) -> dict[str, float]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: metrics file not found (run `jtcse evaluate` first)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise UserError(f"{path}: expected a JSON object of task -> Spearman x 100 (or accuracy x 100)")
    return {k: float(v) for k, v in metrics.items()}


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
    sections = ("model", "data", "runtime", "pretrain", "train", "distill", "evaluate", "package")
    dump = {name: getattr(settings, name).model_dump(mode="json") for name in sections}
    return yaml.safe_dump(dump, sort_keys=False, default_flow_style=False).rstrip()


def model_index(name: str, metrics: dict[str, float]) -> list[dict]:
    """The Hugging Face ``model-index`` results: one entry per STS test set, Spearman x 100 of cosine scores."""
    results = []
    for task, (label, dataset) in MODEL_INDEX_DATASETS.items():
        if task in metrics:
            results.append({
                "task": {"type": "semantic-similarity", "name": "Semantic Similarity"},
                "dataset": {"name": f"{label} (test)", "type": dataset, "split": "test"},
                "metrics": [{"type": "spearman_cosine", "value": round(float(metrics[task]), 2),
                             "name": "Spearman (cosine) x 100"}],
            })
    return [{"name": name, "results": results}]


def _front_matter(name: str, hub_base: str | None, distilled_metrics: dict[str, float]) -> str:
    header = {"language": "en", "library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
              "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "jtcse"],
              "license": "other", "license_name": "research-non-commercial"}
    if hub_base:
        header["base_model"] = hub_base
    header["model-index"] = model_index(name, distilled_metrics)
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---"


def _comparison(distilled_metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> str:
    """One sentence per baseline: how the shipped model's average compares with it."""
    lines = []
    for label, scores in baselines.items():
        if "avg" in scores and "avg" in distilled_metrics:
            delta = distilled_metrics["avg"] - scores["avg"]
            verdict = "above" if delta > 0 else "below" if delta < 0 else "level with"
            lines.append(f"- JTCSE-D averages {distilled_metrics['avg']:.2f}, {abs(delta):.2f} points {verdict} "
                         f"the {label} ({scores['avg']:.2f}).")
    return "\n".join(lines)


def _transfer_section(settings: Settings, transfer_metrics: dict[str, dict[str, float]] | None) -> str:
    """The SentEval transfer table of the card (empty when the package was built without transfer metrics)."""
    if not transfer_metrics:
        return ""
    from jtcse.evaluation.transfer import format_transfer_table

    cap = settings.transfer.max_train
    subset = (f" Each probe learned from a stratified subset of at most {cap} examples (`transfer.max_train`, "
              "the CPU profile); dev and test sets are whole." if cap else "")
    return f"""
SentEval transfer tasks, accuracy x 100: a logistic-regression probe on the frozen vectors ({settings.transfer.folds}-fold
CV for MR, CR, SUBJ, MPQA; the official splits of SST2, TREC and MRPC; `jtcse evaluate --suite transfer`).{subset}

{format_transfer_table(transfer_metrics)}
"""


def model_card(*, settings: Settings, twin_metrics: dict[str, float], distilled_metrics: dict[str, float],
               distilled: dict, twin: dict, provenance: dict, stage_seconds: dict[str, float],
               total_seconds: float | None, baselines: dict[str, dict[str, float]] | None = None,
               transfer_metrics: dict[str, dict[str, float]] | None = None) -> str:
    """The package's README.md. ``baselines``: label -> scores of the untrained base (e.g. per pooling);
    ``transfer_metrics``: label -> SentEval transfer scores (a second table)."""
    from jtcse.evaluation.sts import format_table

    name, version = settings.package.name, settings.package.version
    base = hub_model_id(settings.model.base)
    # The hub's base_model field takes a hub id ("owner/name"), never a local path.
    hub_base = base if re.fullmatch(r"[\w.-]+/[\w.-]+", base) and not Path(base).exists() else None
    pooling = distilled["pooling"]
    pooled = "CLS token state (before the BERT pooler)" if pooling == "cls" else "mean of the token states"
    baselines = baselines or {}
    table = format_table({**{f"{label} (zero-shot)": scores for label, scores in baselines.items()},
                          "JTCSE twin (sum of both towers)": twin_metrics,
                          "JTCSE-D (distilled, this model)": distilled_metrics})
    comparison = _comparison(distilled_metrics, baselines)
    comparison = f"\n\n{comparison}" if comparison else ""
    if stage_seconds:
        rows = "\n".join(f"| {stage} | {_duration(s)} |" for stage, s in stage_seconds.items())
        timing = f"| stage | time |\n|---|---:|\n{rows}\n| **total** | **{_duration(total_seconds or 0.0)}** |"
    else:
        timing = "Not recorded (no `metrics/*/summary.json` was found when the package was built)."
    versions = provenance["versions"]
    dirty = " (built from a working tree with uncommitted changes)" if provenance.get("git_dirty") else ""
    return f"""{_front_matter(f"{name}-{version}", hub_base, distilled_metrics)}

# {name} {version}

Unsupervised English sentence embeddings trained with **JTCSE** (joint tensor-modulus constraints and
cross-attention, Zong et al. 2025, arXiv 2505.02366) from `{base}`, and distilled into a single tower
(**JTCSE-D**). The package holds two models:

| folder | model | vector | dimension | cost |
|---|---|---|---:|---|
| `distilled/` (default) | JTCSE-D, one encoder; a standard sentence-transformers model | {pooled} | {distilled['dimension']} | one forward pass |
| `twin/` | the JTCSE teacher: two towers run independently | {twin['combine']} of both towers' {twin['pooling']} vectors | {twin['dimension']} | two forward passes |

Inputs longer than {distilled['max_seq_length']} tokens are truncated. Compare vectors with cosine similarity
(they are not normalised).

## Usage

```python
from sentence_transformers import SentenceTransformer   # no custom code, no trust_remote_code

model = SentenceTransformer("{name}-{version}/distilled")
vectors = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])
print(model.similarity(vectors[:1], vectors[1:]))
```

```python
import jtcse

model = jtcse.load("{name}-{version}")            # checks SHA256SUMS, opens the default (distilled) model
twin = jtcse.load("{name}-{version}/twin")        # the twin teacher (sum of both towers' vectors)
vectors = model.encode(["A man is playing a guitar."], batch_size=64, normalize_embeddings=True)  # numpy array
print(model.similarity(vectors, vectors))         # cosine, as in sentence-transformers
```

```bash
jtcse encode --model {name}-{version} --input sentences.txt --output vectors.npy
jtcse similarity "A man is playing a guitar." "Someone plays an instrument." --model {name}-{version}
```

`transformers.AutoModel.from_pretrained("{name}-{version}/distilled")` loads the bare encoder; the sentence
vector is then {"`last_hidden_state[:, 0]`" if pooling == "cls" else "the attention-masked mean of `last_hidden_state`"}.

## Evaluation

Spearman correlation x 100 between the cosine similarity of the two sentences' vectors and the gold score
(SimCSE/SentEval protocol: STS12-16 "all" aggregation, STS-B and SICK-R test splits, sentences as given,
truncation at {settings.evaluate.max_length} tokens). Model selection used STS-B dev only. The base rows are
the untrained `{base}` with each pooling, for comparison.

{table}{comparison}
{_transfer_section(settings, transfer_metrics)}
## Training

1. Two towers pre-trained separately with unsupervised SimCSE from `{base}`
   (seeds {settings.pretrain.seed_a} and {settings.pretrain.seed_b}).
2. Joint JTCSE training of both towers: in-tower InfoNCE, cross-tower interaction InfoNCE on
   cross-attention outputs, and the tensor-modulus constraint; cross-attention is used in training only.
3. Distillation (JTCSE-D): one tower (initialised from `{settings.distill.student_init}`) learns the twin's in-batch
   similarity distributions (KL, weight {settings.distill.w_kl}) plus its own InfoNCE (weight {settings.distill.w_nce}).

Settings (`params.yaml`, validated, defaults filled in):

```yaml
{_params_yaml(settings)}
```

| provenance | |
|---|---|
| data version (DVC md5 of `data/`, from `data.dvc`) | `{provenance['data_version']}` |
| code (git commit) | `{provenance['git_commit']}`{dirty} |
| jtcse / torch / transformers | {" / ".join(versions.get(k, "?") for k in ("jtcse", "pytorch", "transformers"))} |
| hardware (machine that built the package) | {provenance['hardware']} |

Training time (wall clock of the last run of each stage, from `metrics/<stage>/summary.json`):

{timing}

## Intended use

Research on sentence embeddings: semantic textual similarity, clustering, retrieval and paraphrase mining of
**English** sentences, and as a reproducible baseline for the JTCSE method. Not for commercial use (see
Licences).

## Limitations

- Trained without labels on a small mixed-domain corpus (43,704 sentences), not the paper's Wiki1M: the
  scores above are what this configuration reaches, not the published JTCSE numbers.
- English only; long inputs are truncated at {distilled['max_seq_length']} tokens; quality on domains far
  from the training corpus (code, legal, medical, social media) is untested.
- STS correlation says nothing about fairness: the base model and the data carry the biases of web and news
  text. Do not use the similarity scores for decisions about people.
- Vectors are unnormalised; use cosine similarity (or `normalize_embeddings=True`), not dot products or Euclidean distance.
- The `twin/` folder is not a sentence-transformers model (it sums two encoders); load it with `jtcse.load`.

## Licences

{DATA_LICENCES}
## Files

`SHA256SUMS` lists every file of this package; `sha256sum -c SHA256SUMS` inside the folder checks it, and
`jtcse.load` refuses a package whose files do not match.
"""


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import jtcse

    return {"jtcse": jtcse.__version__, "pytorch": torch.__version__, "transformers": transformers.__version__}


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ self-check


def self_check(package_dir: str | Path, distilled_source: str | Path, twin_source: str | Path, *,
               pooling: str, tolerance: float = 1e-4) -> None:
    """Every packaged model loads and encodes like its source; the export also loads in sentence-transformers."""
    import numpy as np

    from jtcse.api import load, load_twin
    from jtcse.encoding import TowerEncoder

    package_dir = Path(package_dir)
    checks = [
        (load(package_dir, device="cpu", verify=False),
         TowerEncoder.from_pretrained(str(distilled_source), pooling, device="cpu"), "distilled"),
        (load(package_dir / "twin", device="cpu", verify=False), load_twin(twin_source, device="cpu"), "twin"),
    ]
    for packaged, source, name in checks:
        got, want = packaged.encode(PROBE), source.encode(PROBE)
        if got.shape != want.shape or not np.isfinite(got).all() or np.abs(got - want).max() > tolerance:
            raise RuntimeError(f"self-check: packaged {name} model does not reproduce {name} source vectors")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover - sentence-transformers is a dependency
        log.warning("sentence-transformers not installed; export not checked with it")
        return
    st = SentenceTransformer(str(package_dir / "distilled"), device="cpu")
    got = st.encode(PROBE, convert_to_numpy=True, show_progress_bar=False)
    want = checks[0][0].encode(PROBE)
    if got.shape != want.shape or np.abs(got - want).max() > tolerance:
        raise RuntimeError("self-check: sentence-transformers and jtcse give different vectors for the distilled export")


# ------------------------------------------------------------------------------------------------ package


def build_package(settings: Settings, *, twin: str | Path, distilled: str | Path, twin_metrics: str | Path,
                  distilled_metrics: str | Path, output_dir: str | Path = "models",
                  metrics_root: str | Path | None = None, data_dvc: str | Path = "data.dvc",
                  licenses: str | Path | None = "data/licenses", repo_dir: str | Path = ".",
                  check: bool = True, base_metrics: str | Path | None = None,
                  base_mean_metrics: str | Path | None = None, twin_transfer: str | Path | None = None,
                  distilled_transfer: str | Path | None = None) -> PackageResult:
    """Build ``<output_dir>/<name>-<version>/`` and ``<name>-<version>.tar.gz`` atomically (see module doc)."""
    from jtcse.provenance import data_version, git_commit, git_dirty, hardware

    started = time.perf_counter()
    output_dir = Path(output_dir)
    label = f"{settings.package.name}-{settings.package.version}"
    package_path, tarball = output_dir / label, output_dir / f"{label}.tar.gz"
    twin_scores, distilled_scores = read_metrics(twin_metrics), read_metrics(distilled_metrics)
    base_name = hub_model_id(settings.model.base).rsplit("/", 1)[-1]
    baselines = {}
    if base_metrics is not None:
        baselines[f"base {base_name}, {settings.model.pooling} pooling"] = read_metrics(base_metrics)
    if base_mean_metrics is not None and settings.model.pooling != "mean":
        baselines[f"base {base_name}, mean pooling"] = read_metrics(base_mean_metrics)
    transfer_scores = {label: read_metrics(path) for label, path in (
        ("JTCSE twin (sum of both towers)", twin_transfer), ("JTCSE-D (distilled, this model)", distilled_transfer))
        if path is not None}
    metrics_root = Path(metrics_root) if metrics_root is not None else Path(twin_metrics).resolve().parent.parent
    stage_seconds, total_seconds = training_time(metrics_root)
    provenance = {"data_version": data_version(data_dvc), "git_commit": git_commit(repo_dir),
                  "git_dirty": bool(git_dirty(repo_dir)), "hardware": hardware(), "versions": _versions()}
    pooling, max_seq_length = settings.model.pooling, settings.evaluate.max_length
    release = release_path(output_dir, label)
    for leftover in (*clean_leftovers(package_path), *clean_leftovers(tarball), *clean_leftovers(release)):
        log.warning("removed %s, left by an interrupted `jtcse package`", leftover)
    problems = release_problems(output_dir, label)
    if problems and (package_path.exists() or tarball.exists()):
        log.warning("the previous release in %s is incomplete (%s); rebuilding it", output_dir, "; ".join(problems))

    tar_tmp: Path | None = None
    old_release = release.read_bytes() if release.is_file() else None
    try:
        with atomic_directory(package_path) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes it private; a release is readable by everyone
            distilled_entry = export_sentence_transformer(distilled, tmp / "distilled", pooling=pooling,
                                                          max_seq_length=max_seq_length)
            twin_entry = copy_twin(twin, tmp / "twin")
            if twin_entry["pooling"] != pooling:
                log.warning("twin pooling %r differs from model.pooling %r (the distilled model's)",
                            twin_entry["pooling"], pooling)
            distilled_entry["metrics"], twin_entry["metrics"] = distilled_scores, twin_scores
            if licenses is not None and Path(licenses).is_dir():
                shutil.copytree(licenses, tmp / "licenses")
            elif licenses is not None:
                log.warning("%s not found: the package carries no licence texts", licenses)
            card = model_card(settings=settings, twin_metrics=twin_scores, distilled_metrics=distilled_scores,
                              distilled=distilled_entry, twin=twin_entry, provenance=provenance,
                              stage_seconds=stage_seconds, total_seconds=total_seconds, baselines=baselines,
                              transfer_metrics=transfer_scores)
            (tmp / "README.md").write_text(card, encoding="utf-8")
            (tmp / "distilled" / "README.md").write_text(card, encoding="utf-8")  # travels with the folder alone
            _write_json(tmp / PACKAGE_MANIFEST, {
                "format": PACKAGE_FORMAT, "format_version": PACKAGE_FORMAT_VERSION,
                "name": settings.package.name, "version": settings.package.version, "default": "distilled",
                "models": {"distilled": distilled_entry, "twin": twin_entry},
                "base_model": hub_model_id(settings.model.base),
                "data_version": provenance["data_version"], "git_commit": provenance["git_commit"],
                "training_seconds": total_seconds,
                "files": file_digests(tmp),
            })
            if check:
                self_check(tmp, distilled, twin, pooling=pooling)
            write_checksums(tmp)
            verify_checksums(tmp)
            tar_tmp = write_tarball(tmp, tarball, label)
            # From here until the new release manifest is written, no manifest claims folder and tarball agree.
            release.unlink(missing_ok=True)
            fsync_dir(output_dir)
        atomic_rename(tar_tmp, tarball)
        tar_tmp = None
        write_release(package_path, tarball, release)
    except BaseException:
        _restore_release(release, old_release, output_dir, label)
        raise
    finally:
        if tar_tmp is not None:
            tar_tmp.unlink(missing_ok=True)
    files = sum(1 for p in package_path.rglob("*") if p.is_file())
    log.info("package %s: %d files, tarball %s (%.1f MB) in %.1f s", package_path, files, tarball,
             tarball.stat().st_size / 1e6, time.perf_counter() - started)
    return PackageResult(package_path, tarball, files, release)


def cmd_package(args) -> None:
    from jtcse.config import load_settings

    result = build_package(load_settings(args.params), twin=args.twin, distilled=args.distilled,
                           twin_metrics=args.twin_metrics, distilled_metrics=args.distilled_metrics,
                           output_dir=args.output_dir, metrics_root=args.metrics_root, data_dvc=args.data_dvc,
                           licenses=args.licenses or None, check=not args.no_check,
                           base_metrics=args.base_metrics, base_mean_metrics=args.base_mean_metrics,
                           twin_transfer=args.twin_transfer, distilled_transfer=args.distilled_transfer)
    print(f"package -> {result.path} ({result.files} files); tarball -> {result.tarball}; release -> {result.release}")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("package", help="build the release folder + tarball "
                                               "(distilled model, twin, model card, checksums)")
    p.add_argument("--params", default="params.yaml", help="settings file (package.name / package.version name the folder)")
    p.add_argument("--twin", required=True, help="twin folder (tower_a/, tower_b/, twin.json)")
    p.add_argument("--distilled", required=True, help="distilled single tower (HF folder)")
    p.add_argument("--twin-metrics", required=True, help="seven-task STS JSON of the twin")
    p.add_argument("--distilled-metrics", required=True, help="seven-task STS JSON of the distilled model")
    p.add_argument("--base-metrics", help="seven-task STS JSON of the untrained base with model.pooling "
                                          "(a comparison row in the model card)")
    p.add_argument("--base-mean-metrics", help="seven-task STS JSON of the untrained base with mean pooling")
    p.add_argument("--twin-transfer", help="SentEval transfer JSON of the twin (adds the transfer table to the card)")
    p.add_argument("--distilled-transfer", help="SentEval transfer JSON of the distilled model")
    p.add_argument("--output-dir", default="models", help="writes <output-dir>/<name>-<version>/ and .tar.gz")
    p.add_argument("--metrics-root", help="folder of <stage>/summary.json training times "
                                          "(default: two levels above --twin-metrics)")
    p.add_argument("--data-dvc", default="data.dvc", help="DVC pointer of the data (its md5 is the data version)")
    p.add_argument("--licenses", default="data/licenses", help="licence texts copied into the package ('' = none)")
    p.add_argument("--no-check", action="store_true", help="skip loading the packaged models back (faster)")
    p.set_defaults(func=cmd_package)
