"""The peer on the quality bench: TuNet (github tpc2233/tunet) trained on the same shot for the same
wall clock, through a driver script (``$DUPLIDOG_TUNET_DRIVER``; the driver's own README says what it
needs).

``run_tunet`` never raises for a missing peer: without the driver, ``TUNET_DIR`` or ``TUNET_VENV``, or
when the driver fails, it returns ``{"error": reason}`` and the bench prints "-" for TuNet. A run
takes minutes, so its result is kept in ``OUTDIR/tunet.json`` and reused while the shot (shot.json
and the plate and keyframe files), the minutes and the driver's ``TUNET_*`` knobs are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

DRIVER_ENV = "DUPLIDOG_TUNET_DRIVER"
# The driver's knobs (its header): a different value is a different peer, so it is part of the cache key.
KNOBS = ("TUNET_DIMS", "TUNET_RES", "TUNET_BS", "TUNET_LR", "TUNET_INFER_OVERLAP", "TUNET_PAD")
CACHE = "tunet.json"


def default_driver() -> Path | None:
    """``$DUPLIDOG_TUNET_DRIVER``, else ``<repo root>/../shared/peers/tunet/run_tunet.sh`` if it exists."""
    if os.environ.get(DRIVER_ENV):
        return Path(os.environ[DRIVER_ENV])
    candidate = Path(__file__).resolve().parents[2].parent / "shared/peers/tunet/run_tunet.sh"
    return candidate if candidate.is_file() else None


def shot_fingerprint(shotdir: str | Path) -> str:
    """A hash of shot.json and the names, sizes and mtimes of the plate and keyframe files."""
    shotdir = Path(shotdir)
    digest = hashlib.sha256((shotdir / "shot.json").read_bytes())
    for folder in ("plate", "fixed"):
        for path in sorted((shotdir / folder).glob("*")):
            stat = path.stat()
            digest.update(f"{folder}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def parse_summary(line: str) -> dict:
    """``tunet: res=256 steps=1200 train_s=180.2 ...`` -> {"res": 256, "steps": 1200, "train_s": 180.2, ...};
    a value that is not a number stays a string ("?" becomes None)."""
    fields = {}
    for word in line.split(":", 1)[-1].split():
        key, sep, value = word.partition("=")
        if not sep:
            continue
        if value == "?":
            fields[key] = None
            continue
        for kind in (int, float):
            try:
                fields[key] = kind(value)
                break
            except ValueError:
                pass
        else:
            fields[key] = value
    return fields


def _missing(driver: Path | None) -> str | None:
    if driver is None:
        return (f"no TuNet driver (set {DRIVER_ENV}, or put shared/peers/tunet/run_tunet.sh beside the repo)")
    if not Path(driver).is_file():
        return f"TuNet driver {driver} not found"
    for name, what in (("TUNET_DIR", "a checkout of github tpc2233/tunet"),
                       ("TUNET_VENV", "a virtual environment with its requirements")):
        value = os.environ.get(name)
        if not value:
            return f"{name} is not set ({what}; see shared/peers/tunet/README.md)"
        if not Path(value).is_dir():
            return f"{name}={value} is not a folder"
    return None


def read_outputs(outdir: str | Path, meta: dict) -> dict[int, np.ndarray]:
    """OUTDIR/out.####.<ext> for every frame of the shot."""
    from duplidog import imageio

    outdir = Path(outdir)
    return {f: imageio.read_pixels(outdir / f"out.{f:04d}.{meta['ext']}")
            for f in range(int(meta["first"]), int(meta["last"]) + 1)}


def run_tunet(shotdir: str | Path, outdir: str | Path, minutes: float, driver: str | Path | None = None,
              reuse: bool = True, timeout: float | None = None) -> dict:
    """Train TuNet on ``shotdir``'s keyframes for ``minutes`` and infer every frame into ``outdir``.

    Returns the driver's summary line parsed ("res", "steps", "train_s", "infer_s", ...) with
    "minutes", "fingerprint", "reuse" (True when an earlier run's result was kept) and "outputs"
    ({frame: HxWxC float32}); or {"error": one-line reason} when the peer cannot run or failed.
    """
    shotdir, outdir = Path(shotdir), Path(outdir)
    driver = Path(driver) if driver is not None else default_driver()
    meta = json.loads((shotdir / "shot.json").read_text())
    key = {"minutes": float(minutes), "fingerprint": shot_fingerprint(shotdir),
           "knobs": {k: os.environ[k] for k in KNOBS if k in os.environ}}
    cache = outdir / CACHE
    if reuse and cache.is_file():
        try:
            kept = json.loads(cache.read_text())
            if all(kept.get(k) == v for k, v in key.items()):
                return {**kept, "reuse": True, "outputs": read_outputs(outdir, meta)}
        except Exception:  # noqa: BLE001 - an unreadable cache or a missing frame: run again
            pass
    reason = _missing(driver)
    if reason:
        return {"error": reason}
    outdir.mkdir(parents=True, exist_ok=True)
    cache.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(["bash", str(driver), str(shotdir), str(outdir), f"{float(minutes):g}"],
                              capture_output=True, text=True,
                              timeout=timeout if timeout is not None else float(minutes) * 60 + 1800)
    except subprocess.TimeoutExpired:
        return {"error": f"TuNet driver timed out after {time.perf_counter() - started:.0f} s"}
    (outdir / "tunet.log").write_text(done.stdout + ("\n--- stderr\n" + done.stderr if done.stderr else ""))
    lines = [line for line in done.stdout.splitlines() if line.startswith("tunet:")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return {"error": f"TuNet driver failed (exit {done.returncode}): {last[:200]} (log: {outdir / 'tunet.log'})"}
    summary = {**parse_summary(lines[-1]), "line": lines[-1], "wall_s": round(time.perf_counter() - started, 1),
               "driver": str(driver), **key}
    try:
        outputs = read_outputs(outdir, meta)
    except Exception as error:  # noqa: BLE001 - a missing or unreadable frame is the peer's failure
        return {"error": f"TuNet output unreadable: {str(error).splitlines()[0][:200]}"}
    cache.write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "reuse": False, "outputs": outputs}
