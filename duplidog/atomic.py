"""Write-to-temporary-then-rename, so a killed job never leaves a half-written file under its name.

Every file duplidog produces (frames, manifests, the pool, checkpoints, models) goes through here.
The temporary name sits in the same directory, so the final ``os.replace`` is atomic on POSIX, and it
keeps the final extension, because OpenImageIO picks the file format from the extension.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import uuid
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator

from duplidog.errors import DuplidogError


def _read_umask() -> int:
    mask = os.umask(0o022)  # only readable by setting it; done once, at import, before any thread writes
    os.umask(mask)
    return mask


#: Permission bits a file or folder gets: what the user's umask allows (on a shared farm, usually
#: readable by the group), whatever mode the library that wrote it chose (safetensors writes 0600).
_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
FOLDER_MODE = 0o777 & ~_UMASK


def honour_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes the umask allows."""
    path = Path(path)
    if not path.is_dir():
        _set_mode(path, FILE_MODE)
        return
    _set_mode(path, FOLDER_MODE)
    for folder, folders, files in os.walk(path):
        for name in folders:
            _set_mode(Path(folder, name), FOLDER_MODE)
        for name in files:
            _set_mode(Path(folder, name), FILE_MODE)


def _set_mode(path: Path, mode: int) -> None:
    if path.is_symlink():
        return
    if (path.stat().st_mode & 0o777) != mode:
        os.chmod(path, mode)


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A unique name next to ``path`` that keeps its extension: ``a/b.exr`` -> ``a/.b.tmp-1f3a.exr``."""
    path = Path(path)
    stem, suffix = _stem_and_suffix(path)
    return path.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")


def _stem_and_suffix(path: Path) -> tuple[str, str]:
    suffix = "".join(path.suffixes[-1:])
    return (path.name[: len(path.name) - len(suffix)] if suffix else path.name), suffix


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what an earlier, killed write of ``path`` left behind (its ``temporary_sibling`` names).

    Call it only where no other live process writes ``path`` (a frame belongs to one chunk job).
    Returns what was removed.
    """
    path = Path(path)
    stem, suffix = _stem_and_suffix(path)
    removed = []
    for stale in path.parent.glob(f".{glob_escape(stem)}.tmp-{'[0-9a-f]' * 8}{glob_escape(suffix)}"):
        _remove(stale)
        removed.append(stale)
    return removed


#: The names ``temporary_sibling`` gives: ``.<stem>.tmp-<8 hex><one suffix>``.
_TEMPORARY_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}(\.[^.]+)?$")


def sweep_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove every temporary (``temporary_sibling``'s names) under ``folder``: what writes killed with
    the run that made them left behind. Call it only while nothing writes under ``folder`` (the
    pipeline: when a run starts, before its first job, holding Snakemake's lock). Returns them."""
    removed = []
    for root, folders, files in os.walk(folder):
        for name in [*folders, *files]:
            if _TEMPORARY_NAME.match(name):
                if name in folders:
                    folders.remove(name)  # do not walk into it: it goes whole
                path = Path(root, name)
                _remove(path)
                removed.append(path)
    return removed


#: Why a write failed, by errno, as users say it.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied"}
#: Free space below which a failed write is taken to be a full disk (torch and OpenImageIO report a
#: full disk without its errno: "file write failed", "iostream error").
_NEARLY_FULL_BYTES = 1 << 20


def _errnos(error: BaseException, folder: Path) -> set[int]:
    """The errnos of ``error`` and every exception chained to it that concern ``folder`` (an error
    naming another file, such as an input that could not be read, is not the write's)."""
    found, seen = set(), set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            name = error.filename
            if name is None or Path(os.path.abspath(os.fsdecode(name))).is_relative_to(os.path.abspath(folder)):
                found.add(error.errno)
        error = error.__cause__ or error.__context__
    return found


def why_not_written(path: str | os.PathLike, error: BaseException) -> DuplidogError | None:
    """A one-line DuplidogError naming ``path`` (or its folder) when ``error``, raised while writing it,
    came from a full disk or a folder that cannot be written; None when it came from something else."""
    path = Path(path)
    folder = path.parent
    codes = _errnos(error, folder)
    if codes & _DISK_FULL:
        return DuplidogError(f"{path}: disk full (no space left in {folder}); free some space and rerun")
    for code, what in _NOT_WRITABLE.items():
        if code in codes:
            return DuplidogError(f"{folder}: folder not writable ({what}), so {path.name} cannot be written")
    # Writers that lose the errno (OpenImageIO, torch.save): ask the folder and the disk themselves.
    try:
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            return DuplidogError(f"{folder}: folder not writable, so {path.name} cannot be written")
        if shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES:
            return DuplidogError(f"{path}: disk full (no space left in {folder}); free some space and rerun")
    except OSError:
        pass
    return None


def environment_error(error: BaseException) -> DuplidogError | None:
    """A full disk or a read-only file system anywhere in ``error``'s chain, as one line naming the file
    where the error does (None for anything else). The safety net for writes that do not go through
    ``atomic_path`` (a log or metrics file appended to): the command line and every job's log use it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL | {errno.EROFS}:
            if error.filename:
                return why_not_written(os.fsdecode(error.filename), error)
            what = "disk full" if error.errno in _DISK_FULL else "read-only file system"
            return DuplidogError(f"{what} while writing ({error.strerror}); free some space and rerun")
        error = error.__cause__ or error.__context__
    return None


def _remove(tmp: Path) -> None:
    """Remove a failed write's temporary; never raise (on a read-only or full disk that too may fail,
    and its error would hide the one that matters)."""
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink()
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` to; rename it into place only if the block succeeds.

    Works for files and for directories (a Zarr store, a model folder): on failure the temporary is
    removed, and an existing ``path`` is left as it was. A full disk or a folder that cannot be written
    is raised as one DuplidogError naming the file or folder (``why_not_written``).
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the folder that could not be made may be an ancestor: name that one
        where = Path(os.fsdecode(exc.filename)) if exc.filename else final.parent
        clear = why_not_written(where / final.name, exc)
        if clear is None:
            raise
        raise clear from None
    tmp = temporary_sibling(final)
    try:
        yield tmp
        honour_umask(tmp)
        if tmp.is_dir() and final.is_dir():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = temporary_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except Exception as exc:
        _remove(tmp)
        clear = why_not_written(final, exc)
        if clear is None:
            raise
        raise clear from None
    except BaseException:  # KeyboardInterrupt, SystemExit: clean up, and let them through as they are
        _remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file atomically (fsync before rename so a crash cannot leave it empty)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def standard_json(value):
    """``value`` with every NaN and infinite float replaced by None, so ``json.dumps`` writes standard
    JSON (``NaN`` and ``Infinity`` are not JSON, and other tools refuse such a file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: standard_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [standard_json(item) for item in value]
    return value


def atomic_write_json(path: str | os.PathLike, value, indent: int = 2) -> None:
    """Write ``value`` as standard JSON (non-finite numbers as null), atomically."""
    atomic_write_text(path, json.dumps(standard_json(value), indent=indent, allow_nan=False) + "\n")
