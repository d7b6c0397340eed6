"""Shipping a trained model: one self-describing, checksummed folder (and a tarball of it) per release.

``jtcse package`` turns the pipeline's outputs into ``<output-dir>/<name>-<version>/``::

    distilled/            JTCSE-D as a standard sentence-transformers folder (HF weights at the root,
                          modules.json = Transformer + Pooling): SentenceTransformer(path) and AutoModel load it
      onnx/               model.onnx + an int8 variant (package.onnx, jtcse.onnx_backend): jtcse.load(path, backend="onnx")
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

One ``jtcse package`` at a time per package: a run holds :class:`PackageLock` (a ``flock`` on
``.<name>-<version>.lock`` beside the folder) from before it removes leftovers until the release manifest is
written, so a second run into the same output is refused instead of deleting the first's live temporary folder.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jtcse.api import verify_checksums
from jtcse.config import Settings
from jtcse.errors import InputNotFoundError, UserError
from jtcse.formats import CHECKSUMS, PACKAGE_MANIFEST, TWIN_MANIFEST, hub_model_id, sha256_file
from jtcse.io import (
    FolderLock,
    atomic_directory,
    atomic_rename,
    atomic_write_bytes,
    atomic_write_json,
    clean_leftovers,
    fsync_dir,
    fsync_file,
)
from jtcse.model_card import model_card, read_data_facts, training_time

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


class PackageLocked(UserError):
    """Another ``jtcse package`` is writing the same package."""


class PackageLock(FolderLock):
    """One writer per package folder (and its tarball and release manifest); the lock file is removed on release."""

    def __init__(self, package_path: str | os.PathLike):
        super().__init__(package_path, remove_on_release=True)

    def refusal(self, holder: str) -> UserError:
        return PackageLocked(
            f"{self.target}: another `jtcse package` is writing this package ({holder}); wait for it to end, "
            "or give this run its own --output-dir"
        )


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


def export_sentence_transformer(
    source: str | Path, target: str | Path, *, pooling: str, max_seq_length: int, model_card: str | None = None
) -> dict:
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
    atomic_write_json(
        target / POOLING_DIR / "config.json",
        {
            "word_embedding_dimension": dimension,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    atomic_write_json(
        target / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
        ],
    )
    # The tokenizer's own lower-casing (uncased vocabularies) still applies; this flag would add a second one.
    atomic_write_json(target / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    atomic_write_json(
        target / "config_sentence_transformers.json",
        {
            # No "sentence_transformers" version: it is not written by that library, and a version newer than the
            # reader's would only trigger a warning.
            "__version__": _versions(),
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    if model_card is not None:
        (target / "README.md").write_text(model_card, encoding="utf-8")
    return {
        "path": target.name,
        "kind": "tower",
        "format": "sentence-transformers",
        "pooling": pooling,
        "dimension": dimension,
        "max_seq_length": max_seq_length,
    }


def copy_twin(source: str | Path, target: str | Path) -> dict:
    """Copy a twin folder (tower_a/, tower_b/, twin.json); returns its entry for ``jtcse_package.json``."""
    source, target = Path(source), Path(target)
    manifest_path = source / TWIN_MANIFEST
    if not manifest_path.is_file():
        raise InputNotFoundError(
            f"{source}: no {TWIN_MANIFEST}; not a twin folder (expected the output of `jtcse train`)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for tower in manifest["towers"]:
        if not list((source / tower).glob("*.safetensors")):
            raise UserError(f"{source / tower}: no *.safetensors weights")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", *(f"*{s}" for s in PICKLE_SUFFIXES)))
    dimension = _hidden_size(target / manifest["towers"][0])
    if manifest["combine"] == "concat":
        dimension += _hidden_size(target / manifest["towers"][1])
    return {
        "path": target.name,
        "kind": "twin",
        "format": "jtcse-twin",
        "towers": manifest["towers"],
        "pooling": manifest["pooling"],
        "combine": manifest["combine"],
        "normalize": bool(manifest.get("normalize", False)),
        "dimension": dimension,
    }


# ------------------------------------------------------------------------------------------------ integrity


def write_checksums(directory: str | Path) -> Path:
    """SHA256SUMS over every file below ``directory``, sorted, in ``sha256sum`` format (``sha256sum -c`` checks it)."""
    directory = Path(directory)
    names = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS
    )
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
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in (CHECKSUMS, PACKAGE_MANIFEST)
    }


def release_path(output_dir: str | Path, label: str) -> Path:
    return Path(output_dir) / f"{label}{RELEASE_SUFFIX}"


def write_release(package_path: Path, tarball: Path, release: Path) -> None:
    """The release manifest, written last: it names the folder and the tarball that belong together."""
    atomic_write_json(
        release,
        {
            "format": RELEASE_FORMAT,
            "folder": package_path.name,
            "tarball": tarball.name,
            "folder_sha256sums": sha256_file(package_path / CHECKSUMS),
            "tarball_sha256": sha256_file(tarball),
        },
    )


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
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=mtime, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
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


# ------------------------------------------------------------------------------------------------ inputs


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


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import jtcse

    return {"jtcse": jtcse.__version__, "pytorch": torch.__version__, "transformers": transformers.__version__}


# ------------------------------------------------------------------------------------------------ self-check


def self_check(
    package_dir: str | Path,
    distilled_source: str | Path,
    twin_source: str | Path,
    *,
    pooling: str,
    tolerance: float = 1e-4,
) -> None:
    """Every packaged model loads and encodes like its source; the export also loads in sentence-transformers."""
    import numpy as np

    from jtcse.api import load, load_twin
    from jtcse.encoding import TowerEncoder

    package_dir = Path(package_dir)
    checks = [
        (
            load(package_dir, device="cpu", verify=False),
            TowerEncoder.from_pretrained(str(distilled_source), pooling, device="cpu"),
            "distilled",
        ),
        (load(package_dir / "twin", device="cpu", verify=False), load_twin(twin_source, device="cpu"), "twin"),
    ]
    for packaged, source, name in checks:
        got, want = packaged.encode(PROBE), source.encode(PROBE)
        if got.shape != want.shape or not np.isfinite(got).all() or np.abs(got - want).max() > tolerance:
            raise RuntimeError(f"self-check: packaged {name} model does not reproduce {name} source vectors")
    _check_onnx(package_dir / "distilled", checks[0][0].encode(PROBE))
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover - sentence-transformers is a dependency
        log.warning("sentence-transformers not installed; export not checked with it")
        return
    st = SentenceTransformer(str(package_dir / "distilled"), device="cpu")
    got = st.encode(PROBE, convert_to_numpy=True, show_progress_bar=False)
    want = checks[0][0].encode(PROBE)
    if got.shape != want.shape or np.abs(got - want).max() > tolerance:
        raise RuntimeError(
            "self-check: sentence-transformers and jtcse give different vectors for the distilled export"
        )


# ------------------------------------------------------------------------------------------------ ONNX


def _package_onnx(model_dir: Path, settings: Settings) -> dict | None:
    """distilled/onnx/ (float32 + int8), or None when package.onnx is off or onnx/onnxruntime are missing."""
    from jtcse.onnx_backend import package_onnx

    return package_onnx(model_dir, settings)


def _check_onnx(model_dir: Path, want) -> None:
    """The ONNX files the manifest records reproduce the packaged distilled model's vectors ``want``."""
    from jtcse.onnx_backend import check_onnx

    manifest = json.loads((model_dir.parent / PACKAGE_MANIFEST).read_text(encoding="utf-8"))
    check_onnx(model_dir, manifest["models"]["distilled"].get("onnx"), PROBE, want)


# ------------------------------------------------------------------------------------------------ package


def build_package(
    settings: Settings,
    *,
    twin: str | Path,
    distilled: str | Path,
    twin_metrics: str | Path,
    distilled_metrics: str | Path,
    output_dir: str | Path = "models",
    metrics_root: str | Path | None = None,
    data_dvc: str | Path = "data.dvc",
    licenses: str | Path | None = "data/licenses",
    repo_dir: str | Path = ".",
    check: bool = True,
    base_metrics: str | Path | None = None,
    base_mean_metrics: str | Path | None = None,
    twin_transfer: str | Path | None = None,
    distilled_transfer: str | Path | None = None,
    data_manifest: str | Path | None = None,
) -> PackageResult:
    """Build ``<output_dir>/<name>-<version>/`` and ``<name>-<version>.tar.gz`` atomically (see module doc).

    ``data_manifest``: the data bundle's MANIFEST.md, whose licence notes the model card lists (default: beside
    ``licenses``, else ``data/MANIFEST.md``)."""
    from jtcse.provenance import data_version, git_commit, git_dirty, hardware

    started = time.perf_counter()
    output_dir = Path(output_dir)
    label = f"{settings.package.name}-{settings.package.version}"
    package_path, tarball = output_dir / label, output_dir / f"{label}.tar.gz"
    twin_scores, distilled_scores = read_metrics(twin_metrics), read_metrics(distilled_metrics)
    base_name = hub_model_id(settings.model.base).rsplit("/", 1)[-1]
    baselines = {}
    # The untrained base with each pooling (the dvc stages evaluate_base and evaluate_base_mean), whatever
    # model.pooling is: a trained model is read next to the base's best zero-shot pooling, not only its own.
    if base_metrics is not None:
        baselines[f"base {base_name}, cls pooling"] = read_metrics(base_metrics)
    if base_mean_metrics is not None:
        baselines[f"base {base_name}, mean pooling"] = read_metrics(base_mean_metrics)
    transfer_scores = {
        label: read_metrics(path)
        for label, path in (
            ("JTCSE twin (sum of both towers)", twin_transfer),
            ("JTCSE-D (distilled, this model)", distilled_transfer),
        )
        if path is not None
    }
    metrics_root = Path(metrics_root) if metrics_root is not None else Path(twin_metrics).resolve().parent.parent
    stage_seconds, total_seconds = training_time(metrics_root)
    provenance = {
        "data_version": data_version(data_dvc),
        "git_commit": git_commit(repo_dir),
        "git_dirty": bool(git_dirty(repo_dir)),
        "hardware": hardware(),
        "versions": _versions(),
    }
    pooling, max_seq_length = settings.model.pooling, settings.evaluate.max_length
    if data_manifest is None:
        data_manifest = Path(licenses).parent / "MANIFEST.md" if licenses is not None else Path("data/MANIFEST.md")
    data_facts = read_data_facts(settings, manifest=data_manifest, licenses=licenses)
    release = release_path(output_dir, label)
    with PackageLock(package_path):  # held until the release manifest is written
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
                distilled_entry = export_sentence_transformer(
                    distilled, tmp / "distilled", pooling=pooling, max_seq_length=max_seq_length
                )
                onnx_entry = _package_onnx(tmp / "distilled", settings)
                if onnx_entry is not None:
                    distilled_entry["onnx"] = onnx_entry
                twin_entry = copy_twin(twin, tmp / "twin")
                if isinstance(twin_entry["pooling"], str) and twin_entry["pooling"] != pooling:
                    log.warning(
                        "twin pooling %r differs from model.pooling %r (the distilled model's)",
                        twin_entry["pooling"],
                        pooling,
                    )
                distilled_entry["metrics"], twin_entry["metrics"] = distilled_scores, twin_scores
                if licenses is not None and Path(licenses).is_dir():
                    shutil.copytree(licenses, tmp / "licenses")
                elif licenses is not None:
                    log.warning("%s not found: the package carries no licence texts", licenses)
                card = model_card(
                    settings=settings,
                    twin_metrics=twin_scores,
                    distilled_metrics=distilled_scores,
                    distilled=distilled_entry,
                    twin=twin_entry,
                    provenance=provenance,
                    stage_seconds=stage_seconds,
                    total_seconds=total_seconds,
                    baselines=baselines,
                    transfer_metrics=transfer_scores,
                    data_facts=data_facts,
                )
                (tmp / "README.md").write_text(card, encoding="utf-8")
                (tmp / "distilled" / "README.md").write_text(card, encoding="utf-8")  # travels with the folder alone
                atomic_write_json(
                    tmp / PACKAGE_MANIFEST,
                    {
                        "format": PACKAGE_FORMAT,
                        "format_version": PACKAGE_FORMAT_VERSION,
                        "name": settings.package.name,
                        "version": settings.package.version,
                        "default": "distilled",
                        "models": {"distilled": distilled_entry, "twin": twin_entry},
                        "base_model": hub_model_id(settings.model.base),
                        "data_version": provenance["data_version"],
                        "git_commit": provenance["git_commit"],
                        "training_seconds": total_seconds,
                        "files": file_digests(tmp),
                    },
                )
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
    log.info(
        "package %s: %d files, tarball %s (%.1f MB) in %.1f s",
        package_path,
        files,
        tarball,
        tarball.stat().st_size / 1e6,
        time.perf_counter() - started,
    )
    return PackageResult(package_path, tarball, files, release)
