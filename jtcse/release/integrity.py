"""What makes a release checkable: ``SHA256SUMS`` and the per-file digests of the package manifest, the
reproducible tarball, and the release manifest ``<name>-<version>.release.json`` (written last, naming the folder
and the tarball that belong together; :func:`release_problems` says why a pair is not one release)."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import tempfile
from pathlib import Path

from jtcse.formats import CHECKSUMS, PACKAGE_MANIFEST, sha256_file
from jtcse.io import atomic_write_bytes, atomic_write_json, fsync_file

RELEASE_SUFFIX = ".release.json"
RELEASE_FORMAT = "jtcse-release"


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


def restore_release(release: Path, old_release: bytes | None, output_dir: Path, label: str) -> None:
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
