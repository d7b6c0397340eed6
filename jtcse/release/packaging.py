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
which :func:`~jtcse.release.integrity.release_problems` reports and the next ``jtcse package`` repairs (it rebuilds both, and first removes
the ``.tmp``/``.old`` leftovers of the killed run).

One ``jtcse package`` at a time per package: a run holds :class:`PackageLock` (a ``flock`` on
``.<name>-<version>.lock`` beside the folder) from before it removes leftovers until the release manifest is
written, so a second run into the same output is refused instead of deleting the first's live temporary folder.

This module assembles a release; its parts live beside it: :mod:`jtcse.release.export` (the model folders),
:mod:`jtcse.release.integrity` (checksums, the tarball, the release manifest) and :mod:`jtcse.release.model_card`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from jtcse.api import verify_checksums
from jtcse.config import Settings
from jtcse.errors import InputNotFoundError, UserError
from jtcse.formats import PACKAGE_MANIFEST, TWIN_MANIFEST, hub_model_id
from jtcse.io import (
    FolderLock,
    atomic_directory,
    atomic_rename,
    atomic_write_json,
    clean_leftovers,
    fsync_dir,
)
from jtcse.release.export import copy_twin, export_sentence_transformer, library_versions
from jtcse.release.integrity import (
    file_digests,
    release_path,
    release_problems,
    restore_release,
    write_checksums,
    write_release,
    write_tarball,
)
from jtcse.release.model_card import model_card, read_data_facts, training_time, twin_description

log = logging.getLogger(__name__)

PACKAGE_FORMAT = "jtcse-package"
PACKAGE_FORMAT_VERSION = 2  # 2: the manifest records every model file's SHA256 ("files")
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
    twin_manifest = Path(twin) / TWIN_MANIFEST  # checked by copy_twin below; read here for the row's label
    twin_label = (
        f"JTCSE twin ({twin_description(json.loads(twin_manifest.read_text(encoding='utf-8')))})"
        if twin_manifest.is_file()
        else "JTCSE twin"
    )
    transfer_scores = {
        label: read_metrics(path)
        for label, path in (
            (twin_label, twin_transfer),
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
        "versions": library_versions(),
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
            restore_release(release, old_release, output_dir, label)
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
