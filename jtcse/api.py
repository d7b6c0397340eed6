"""Loading any saved model as an encoder: a tower, a twin folder, or a packaged model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from jtcse.errors import UserError
from jtcse.formats import CHECKSUMS, PACKAGE_MANIFEST, TWIN_MANIFEST, sha256_file, twin_poolings

if TYPE_CHECKING:  # torch and transformers load on first use: `jtcse --help` and checksum checks stay fast
    from jtcse.encoding import Encoder, TwinEncoder

DEFAULT_MAX_LENGTH = 128

log = logging.getLogger(__name__)


class IntegrityError(UserError):
    """A packaged file does not match its recorded checksum."""


def package_root(path: str | Path) -> Path | None:
    """The package (a folder holding jtcse_package.json) that ``path`` is, or lies inside; None when none."""
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if (candidate / PACKAGE_MANIFEST).is_file():
            return candidate
    return None


def verify_checksums(directory: str | Path) -> None:
    """Refuse a package whose files differ from its SHA256SUMS (a changed, missing or unlisted file)."""
    directory = Path(directory)
    sums = directory / CHECKSUMS
    listed: dict[str, str] = {}
    for lineno, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if not name:
            raise IntegrityError(f"{sums}:{lineno}: malformed line (expected '<sha256>  <path>')")
        listed[name] = digest
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {CHECKSUMS}
    for name in sorted(present - set(listed)):
        raise IntegrityError(f"{directory / name}: file is not listed in {sums}")
    actual = {}
    for name, digest in listed.items():
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in {sums} but missing")
        actual[name] = sha256_file(path)
        if actual[name] != digest:
            raise IntegrityError(f"{path}: SHA256 does not match {sums}; the package was modified or corrupted")
    _verify_manifest_digests(directory, actual)


def _verify_manifest_digests(directory: Path, actual: dict[str, str]) -> None:
    """A file edited together with SHA256SUMS still differs from the digest jtcse_package.json recorded."""
    manifest_path = directory / PACKAGE_MANIFEST
    if not manifest_path.is_file():
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise IntegrityError(f"{manifest_path}: not valid JSON ({err})") from None
    recorded = manifest.get("files")
    if recorded is None:
        if manifest.get("format_version", 1) >= 2:
            raise IntegrityError(f'{manifest_path}: the file digests ("files") are missing; the package was modified')
        log.warning(
            "%s: a package of format 1 records no file digests; only SHA256SUMS is checked (rebuild it "
            "with `jtcse package`)",
            directory,
        )
        return
    expected = {name for name in actual if name != PACKAGE_MANIFEST}
    for name in sorted(expected ^ set(recorded)):
        raise IntegrityError(
            f"{directory / name}: {'not recorded in' if name in expected else 'recorded in'} "
            f"{manifest_path.name}{'' if name in expected else ' but missing'}; the package was modified"
        )
    for name in sorted(expected):
        if recorded[name] != actual[name]:
            raise IntegrityError(
                f"{directory / name}: SHA256 does not match the digest in {manifest_path.name} "
                f"(SHA256SUMS was edited too); the package was modified or corrupted"
            )


def verify_package_of(path: str | Path) -> None:
    """Verify the package ``path`` is or lies inside (``<pkg>/twin/tower_a`` too); a package without
    SHA256SUMS is refused. A folder outside any package is checked against its own SHA256SUMS, if it has one."""
    path = Path(path)
    root = package_root(path)
    if root is None:
        if (path / CHECKSUMS).is_file():
            verify_checksums(path)
        return
    if not (root / CHECKSUMS).is_file():
        raise IntegrityError(
            f"{root}: a package ({PACKAGE_MANIFEST}) without {CHECKSUMS}; refusing to load weights "
            "that cannot be verified (rebuild it with `jtcse package`)"
        )
    verify_checksums(root)


def load_twin(
    path: str | Path, *, device: str = "auto", max_length: int = 128, combine: str | None = None
) -> TwinEncoder:
    from jtcse.encoding import TowerEncoder, TwinEncoder

    path = Path(path)
    manifest = json.loads((path / TWIN_MANIFEST).read_text(encoding="utf-8"))
    towers = [
        TowerEncoder.from_pretrained(str(path / name), pooling, max_length, device)
        for name, pooling in zip(manifest["towers"], twin_poolings(manifest))
    ]
    return TwinEncoder(towers[0], towers[1], combine or manifest["combine"], bool(manifest.get("normalize", False)))


def load(
    path: str | Path,
    *,
    pooling: str | None = None,
    device: str = "auto",
    max_length: int | None = None,
    verify: bool = True,
    backend: str = "torch",
    file_name: str | None = None,
) -> Encoder:
    """Open a twin folder (twin.json), a package (SHA256SUMS checked) or any HF/sentence-transformers model.

    ``max_length`` defaults to the model's own ``sentence_bert_config.json`` max_seq_length, else 128.
    A model folder inside a package (``<package>/twin``) is checked against the package's SHA256SUMS too.
    ``backend="onnx"`` runs the single-tower model's ONNX export with onnxruntime (CPU) instead of torch:
    ``file_name`` is the file relative to the model folder (default ``onnx/model.onnx``; a package's int8
    variant is ``onnx/model_qint8_<preset>.onnx``), as in sentence-transformers' ``model_kwargs``.
    """
    from jtcse.encoding import TowerEncoder

    if backend not in ("torch", "onnx"):
        raise UserError(f"backend {backend!r} is not supported; use 'torch' or 'onnx'")
    if file_name is not None and backend != "onnx":
        raise UserError(f"file_name {file_name!r} names an ONNX file: it needs backend='onnx'")
    path = Path(path)
    if verify:
        verify_package_of(path)
    package = path / PACKAGE_MANIFEST
    if package.is_file():
        entry = json.loads(package.read_text(encoding="utf-8"))
        return load(
            path / entry["default"],
            pooling=pooling,
            device=device,
            max_length=max_length,
            verify=False,
            backend=backend,
            file_name=file_name,
        )
    if (path / TWIN_MANIFEST).is_file():
        if backend == "onnx":
            raise UserError(
                f"{path}: a twin (two towers) has no ONNX export; backend='onnx' runs a single tower, "
                "such as a package's distilled model"
            )
        return load_twin(path, device=device, max_length=max_length or DEFAULT_MAX_LENGTH)
    if backend == "onnx":
        from jtcse.onnx_backend import load_onnx

        return load_onnx(path, file_name=file_name, pooling=pooling, max_length=max_length, device=device)
    return TowerEncoder.from_pretrained(
        str(path), pooling or _saved_pooling(path), max_length or _saved_max_length(path), device
    )


def _saved_max_length(path: Path) -> int:
    """Truncation recorded by sentence-transformers' sentence_bert_config.json, else the default 128."""
    config = path / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def _saved_pooling(path: Path) -> str:
    """Pooling recorded by sentence-transformers' 1_Pooling/config.json (classic or v6 keys), else the paper's CLS."""
    config = path / "1_Pooling" / "config.json"
    if not config.is_file():
        return "cls"
    modes = json.loads(config.read_text(encoding="utf-8"))
    if "pooling_mode" in modes:  # sentence-transformers >= 6 writes one key: "cls", "mean", ... (or a list)
        mode = modes["pooling_mode"]
        mode = mode[0] if isinstance(mode, list) and len(mode) == 1 else mode
    else:  # classic keys: one boolean per mode
        active = [
            k.removeprefix("pooling_mode_") for k, v in modes.items() if k.startswith("pooling_mode_") and v is True
        ]
        mode = "+".join({"cls_token": "cls", "mean_tokens": "mean"}.get(a, a) for a in active) or "cls"
    if mode not in ("cls", "mean"):
        raise UserError(f"{config}: pooling {mode!r} is not supported (cls or mean); pass pooling= explicitly")
    return mode
