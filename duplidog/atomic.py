"""Write-to-temporary-then-rename, so a killed job never leaves a half-written file under its name.

Every file duplidog produces (frames, manifests, the pool, checkpoints, models) goes through here.
The temporary name sits in the same directory, so the final ``os.replace`` is atomic on POSIX, and it
keeps the final extension, because OpenImageIO picks the file format from the extension.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator


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
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` to; rename it into place only if the block succeeds.

    Works for files and for directories (a Zarr store, a model folder): on failure the temporary is
    removed, and an existing ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
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
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
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
