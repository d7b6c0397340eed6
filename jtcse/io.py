"""Atomic writes: an interrupted stage leaves the previous artifact or nothing, never half of one.

Every writer goes through this module: the new content is written to a temporary sibling, flushed to disk
(``fsync``), renamed over the target (``os.replace``, atomic on POSIX), and the parent directory is fsynced so
the rename itself survives a power loss. A kill at any point leaves either the old complete file/folder or the
new complete one; at worst a hidden ``.<name>.*.tmp`` / ``.<name>.old`` sibling, which
:func:`clean_leftovers` removes on the next run.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jtcse.errors import UserError

TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename, creation or deletion inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file and folder below ``path`` (before a folder is renamed into place)."""
    path = Path(path)
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


def _tmp_sibling(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator:
    """Yield a file object on a temporary sibling; on success it replaces ``path``, on failure it is removed.

    The new file keeps the permission bits of the file it replaces (else 0o666 minus the umask, as ``open``
    would): mkstemp's private 0o600 would make a release unreadable to others.
    """
    path = Path(path)
    perms = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_umask()
    fd, tmp = _tmp_sibling(path)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, perms)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: How libraries that do not raise ``OSError(ENOSPC)`` say "disk full": safetensors (Rust ``io::Error``, shown
#: as ``os error 28`` or ``Os { code: 28, kind: StorageFull ... }``), ``shutil.Error`` (a list of ``[Errno 28]``).
_NO_SPACE_TEXT = re.compile(r"\bos error 28\b|\bcode: 28\b|StorageFull|\[Errno 28\]|No space left on device")


def no_space_error(err: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """``OSError(ENOSPC, ..., file)`` when ``err`` (or an exception it wraps) says the disk is full, else None.

    The file is the one the error names, else ``path``; a ``shutil.Error`` of a copy names its first target.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), current.filename or path)
        if isinstance(current, shutil.Error) and current.args and isinstance(current.args[0], list):
            for entry in current.args[0]:
                if isinstance(entry, tuple) and len(entry) == 3 and _NO_SPACE_TEXT.search(str(entry[2])):
                    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(entry[1]))
        elif not isinstance(current, OSError) and _NO_SPACE_TEXT.search(str(current)):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def naming_a_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Inside the block, a full disk (whichever library reports it, however) becomes ``OSError(ENOSPC)`` naming
    the file, or else ``path``: ``jtcse`` shows it as one line, exit status 2."""
    try:
        yield
    except Exception as err:
        full = no_space_error(err, path)
        if full is None:
            raise
        raise full from err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the name of a temporary sibling for a library that writes the file itself (``torch.onnx.export``,
    onnxruntime's quantiser); on success that file is fsynced and renamed over ``path``, on failure removed."""
    path = Path(path)
    perms = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_umask()
    fd, tmp = _tmp_sibling(path)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.chmod(tmp, perms)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: str | os.PathLike, option: str = "--output", *, parent_must_exist: bool = False) -> Path:
    """Refuse, before any work, an output path that names a folder (or whose folder is missing, if required)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder, expected a file name (e.g. {path / 'out'})")
    if parent_must_exist and not path.parent.is_dir():
        raise UserError(f"{option} {path}: folder {path.parent} does not exist")
    return path


def atomic_write_json(path: str | os.PathLike, payload, *, sort_keys: bool = False) -> None:
    """Strict JSON: NaN or infinity is refused (ValueError), never written as the non-standard NaN/Infinity."""
    try:
        text = json.dumps(payload, indent=2, allow_nan=False, sort_keys=sort_keys)
    except ValueError as err:
        raise ValueError(f"{path}: refusing to write a non-finite number as JSON ({err}): {payload!r:.300}") from None
    atomic_write_text(path, text + "\n")


def atomic_savefig(figure, path: str | os.PathLike, **savefig_kwargs) -> None:
    """Save a matplotlib figure atomically (PNG unless ``format=`` says otherwise); ``savefig_kwargs`` go to
    ``Figure.savefig`` (dpi, bbox_inches...)."""
    savefig_kwargs.setdefault("format", "png")
    with atomic_file(path, "wb") as fh:
        figure.savefig(fh, **savefig_kwargs)


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    """Save a numpy array in ``.npy`` format atomically (``np.save`` to a temporary sibling, fsync, rename)."""
    import numpy as np

    with atomic_file(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def atomic_rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename a complete, fsynced temporary file over ``target`` and make the rename durable."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel, or a filesystem without it
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path``; a reader sees the old folder or the new one, never neither
    (where RENAME_EXCHANGE works; elsewhere a kill between the two renames leaves ``.<name>.old``, restored later)."""
    if not path.exists():
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return
    if _exchange(tmp, path):  # tmp now holds the old folder
        fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = old_sibling(path)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def old_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{OLD_SUFFIX}")


def recover_directory(path: str | os.PathLike) -> bool:
    """A swap killed between its two renames left only ``.<name>.old``: put it back. True when restored."""
    path = Path(path)
    old = old_sibling(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
        fsync_dir(path.parent)
        return True
    return False


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings (``.<name>.*.tmp``, ``.<name>.old``) that killed writers of ``path`` left.

    Only call it while no other writer of ``path`` runs (a stage holds its lock, or owns its output).
    Returns what was removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    recover_directory(path)
    removed = []
    for leftover in [*path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"), old_sibling(path)]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.exists():
            leftover.unlink(missing_ok=True)
        else:
            continue
        removed.append(leftover)
    return removed


def leftover_target(path: str | os.PathLike) -> Path | None:
    """The path whose killed writer left ``path`` behind (``.<name>.<random>.tmp`` or ``.<name>.old``: the
    names this module gives its temporary siblings); None for any other name."""
    path = Path(path)
    name = path.name
    if not name.startswith("."):
        return None
    if name.endswith(OLD_SUFFIX) and len(name) > 1 + len(OLD_SUFFIX):
        return path.with_name(name[1 : -len(OLD_SUFFIX)])
    if name.endswith(TMP_SUFFIX):
        target, dot, random_part = name[1 : -len(TMP_SUFFIX)].rpartition(".")
        if dot and target and random_part:
            return path.with_name(target)
    return None


def clean_folder_leftovers(folder: str | os.PathLike) -> list[Path]:
    """:func:`clean_leftovers` for every path inside ``folder`` that a killed writer left siblings of (a
    ``.<name>.old`` folder whose ``<name>`` is gone is put back). Same caveat: no other writer may be running."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    targets = {target for child in folder.iterdir() if (target := leftover_target(child)) is not None}
    return [removed for target in sorted(targets) for removed in clean_leftovers(target)]


def lock_path(path: str | os.PathLike) -> Path:
    # Beside the target, not inside it: a writer replaces or deletes the target, and an unlinked lock locks nothing.
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


class FolderLock:
    """Exclusive, non-blocking ``flock`` on ``.<name>.lock`` beside ``path``: one writer of ``path`` at a time.

    The kernel releases it when the process ends, even after ``kill -9``. The holder's pid and start time are
    written into the lock file for the refusal message (:meth:`refusal`, which subclasses word for their writer).
    With ``remove_on_release`` the lock file is unlinked (while still locked) on release, so it leaves nothing
    beside the target; a process that locked the unlinked file meanwhile sees that and tries the new one.
    """

    def __init__(self, path: str | os.PathLike, *, remove_on_release: bool = False):
        self.target = Path(path)
        self.path = lock_path(self.target)
        self.remove_on_release = remove_on_release
        self._fd: int | None = None

    def refusal(self, holder: str) -> UserError:
        return UserError(f"{self.target}: another process is writing it ({holder}); wait for it to end")

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise self.refusal(holder) from None
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the holder removed this lock file on release: lock the one now at the path
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            if self.remove_on_release:
                self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
