"""Loading any saved model as an encoder: a tower, a twin folder, or a packaged model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jtcse.encoding import Encoder, TowerEncoder, TwinEncoder
from jtcse.training.objectives import TWIN_MANIFEST

CHECKSUMS = "SHA256SUMS"


class IntegrityError(RuntimeError):
    """A packaged file does not match its recorded checksum."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    for name, digest in listed.items():
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in {sums} but missing")
        if sha256_file(path) != digest:
            raise IntegrityError(f"{path}: SHA256 does not match {sums}; the package was modified or corrupted")


def load_twin(path: str | Path, *, device: str = "auto", max_length: int = 128, combine: str | None = None) -> TwinEncoder:
    path = Path(path)
    manifest = json.loads((path / TWIN_MANIFEST).read_text(encoding="utf-8"))
    towers = [TowerEncoder.from_pretrained(str(path / name), manifest["pooling"], max_length, device)
              for name in manifest["towers"]]
    return TwinEncoder(towers[0], towers[1], combine or manifest["combine"])


def load(path: str | Path, *, pooling: str | None = None, device: str = "auto", max_length: int = 128,
         verify: bool = True) -> Encoder:
    """Open a twin folder (twin.json), a package (SHA256SUMS checked) or any HF/sentence-transformers model."""
    path = Path(path)
    if verify and (path / CHECKSUMS).is_file():
        verify_checksums(path)
    package = path / "jtcse_package.json"
    if package.is_file():
        entry = json.loads(package.read_text(encoding="utf-8"))
        return load(path / entry["default"], pooling=pooling, device=device, max_length=max_length, verify=False)
    if (path / TWIN_MANIFEST).is_file():
        return load_twin(path, device=device, max_length=max_length)
    return TowerEncoder.from_pretrained(str(path), pooling or _saved_pooling(path), max_length, device)


def _saved_pooling(path: Path) -> str:
    """Pooling recorded by sentence-transformers' 1_Pooling/config.json, else the paper's CLS."""
    config = path / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text(encoding="utf-8"))
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"
