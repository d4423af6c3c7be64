"""``duplidog bench shot``: one whole shot through the real pipeline, timed stage by stage.

It writes a shot made from a photograph (``duplidog.quality.photos``: scikit-image's ``retina`` filmed
with a camera move and film grain, tracking markers, a wire and a burnt-in logo on the plate; EXR half
like a real plate) whose keyframes are painted out and graded, then runs the Snakemake workflow on it
with the local profile: ingest, pool, train for the budget, infer (one job per chunk) and assemble.

Why Snakemake and not the stage functions in one process: a user's run is Snakemake's, and each of its
jobs starts a fresh interpreter, imports torch, starts CUDA and loads the model (every inference chunk
does); the DAG is built from the frames' headers and the jobs are scheduled with the profile's threads
and GPU claims. Calling the functions in-process would hide all of that. Each stage's seconds are read
from the rule's ``benchmark:`` file (an inference stage is the sum of its chunk jobs, which the
profile's ``gpu=1`` runs one after another); what is left of the run's wall time is Snakemake itself.
The figures inside the jobs (training steps/s in the loop, inference frames/s from read to write) come
from the files the jobs write (``train/metrics.csv``, ``infer/<chunk>.json``), so the start-up cost is the
difference.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from duplidog.core.layout import ShotLayout
from duplidog.errors import DuplidogError

SHOT = "bench_shot"
FIRST_FRAME = 1001
ROOT = Path(__file__).resolve().parents[2]  # the checkout: Snakefile, profiles/
STAMP = "bench_shot.json"
STAGES = ("ingest", "pool", "train", "infer", "assemble")
#: Frames this large are rendered in processes, one per CPU (a process's start is then worth it).
PROCESS_PIXELS = 500_000

#: The grade of the fix, in scene-linear values: a little warmer, brighter and richer.
GRADE_GAIN = np.asarray([1.14, 1.04, 0.90], np.float32)
GRADE_SATURATION = 1.15


# -- the shot --------------------------------------------------------------------------------------
def spread_keyframes(frames: int, count: int) -> list[int]:
    """``count`` keyframes spread over ``frames`` frames, the first and last included."""
    if count < 1 or count > frames:
        raise DuplidogError(f"--keyframes {count}: give 1 to {frames} (the shot's frames)")
    if count == 1:
        return [FIRST_FRAME]
    return sorted({FIRST_FRAME + round(i * (frames - 1) / (count - 1)) for i in range(count)})


def grade(linear: np.ndarray) -> np.ndarray:
    """The colour half of the fix: per-channel gains and saturation about the luminance."""
    from duplidog.quality.photos import luminance

    y = luminance(linear)[..., None]
    return ((y + GRADE_SATURATION * (linear - y)) * GRADE_GAIN).astype(np.float32)


class PaintoutScene:
    """The paint-out shot of ``duplidog.quality.photos`` (its recipe, camera, markers, wire and logo)
    with a grade on top; built the same from ``seed`` in every process that renders frames of it."""

    def __init__(self, width: int, height: int, frames: int, seed: int):
        from duplidog.quality import photos

        self.photos = photos
        self.width, self.height, self.seed = width, height, seed
        self.recipe = photos.RECIPES["paintout"]
        rng = np.random.default_rng([seed, zlib.crc32(SHOT.encode())])
        scale = height / photos.REFERENCE_HEIGHT
        self.camera = photos.Camera(photos.Move.draw(rng, width), frames, width, height)
        self.backdrop = photos.Backdrop(self.recipe, width, self.camera.canvas, self.to_scene)
        view = photos.camera_view(self.camera, width, height)
        self.dressing = np.concatenate(photos.set_dressing(rng, self.camera.canvas, view, scale, self.to_scene), -1)
        self.logo = photos.logo(width, height, scale, rng, self.to_scene)

    def to_scene(self, rgb) -> np.ndarray:
        return self.photos.srgb_to_linear(np.asarray(rgb, np.float32)) * self.recipe.exposure

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(plate, fixed) of frame ``FIRST_FRAME + index``, scene-linear (H, W, 3)."""
        photos = self.photos
        coords = self.camera.coords(index)
        scene = np.maximum(self.backdrop.sample(coords), 0)  # bicubic ringing
        field = photos.grain_field(np.random.default_rng([self.seed, FIRST_FRAME + index]), self.height, self.width)
        dirty = photos.paint_over(scene, self.dressing, self.logo, coords)
        plate = photos.add_grain_linear(dirty, field, self.recipe.grain)
        fixed = grade(photos.add_grain_linear(scene, field, self.recipe.grain))
        return plate, fixed


_WORKER: dict = {}


def _start_worker(width, height, frames, seed, directory, keyframes) -> None:
    from duplidog import imageio

    _WORKER.update(scene=PaintoutScene(width, height, frames, seed), directory=Path(directory),
                   keyframes=set(keyframes), like=imageio.new_like(Path(directory) / "plate.exr", width, height))


def _write_frame(index: int) -> None:
    from duplidog import imageio

    scene, directory, frame = _WORKER["scene"], _WORKER["directory"], FIRST_FRAME + index
    plate, fixed = scene.render(index)
    imageio.write_pixels(directory / f"plate/plate.{frame:04d}.exr", plate, _WORKER["like"])
    if frame in _WORKER["keyframes"]:
        imageio.write_pixels(directory / f"fixed/fixed.{frame:04d}.exr", fixed, _WORKER["like"])


def _source_hash() -> str:
    from duplidog.quality import photos

    digest = hashlib.sha256(Path(photos.__file__).read_bytes() + Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def write_shot(directory: str | Path, width: int, height: int, frames: int, keyframes: int,
               seed: int = 0) -> tuple[dict, bool]:
    """Write the bench shot into ``directory`` (``plate/`` every frame, ``fixed/`` the keyframes) unless it
    already holds this one. Returns (the stamp, whether it was written now). Frames are rendered in
    processes, one per CPU, when they are large: 100 frames of 2K take minutes on one core."""
    directory = Path(directory)
    keys = spread_keyframes(frames, keyframes)
    wanted = {"size": [width, height], "frames": frames, "keyframes": keys, "seed": seed, "source": _source_hash()}
    stamp_path = directory / STAMP
    if stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == wanted:
                return wanted, False
        except ValueError:
            pass  # an unreadable stamp: write the shot again
    stamp_path.unlink(missing_ok=True)
    for name in ("plate", "fixed"):
        shutil.rmtree(directory / name, ignore_errors=True)
        (directory / name).mkdir(parents=True)
    arguments = (width, height, frames, seed, str(directory), keys)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cpus, frames) if width * height >= PROCESS_PIXELS else 1
    if workers > 1:
        # spawn, not fork: the parent may have torch (and its threads) loaded already.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker,
                                 initargs=arguments) as pool:
            list(pool.map(_write_frame, range(frames)))
    else:
        _start_worker(*arguments)
        for index in range(frames):
            _write_frame(index)
    from duplidog.atomic import atomic_write_text

    atomic_write_text(stamp_path, json.dumps(wanted, indent=2) + "\n")
    return wanted, True


# -- the run ---------------------------------------------------------------------------------------
def shot_settings(shot_dir: Path, minutes: float, preset: str | None, device: str | None,
                  settings: dict | None) -> dict:
    """The shot file's contents: the shot's frames, the budget, the preset and device, then ``settings``
    (``--set``) over them."""
    from duplidog.settings import merge_settings, resolve

    user = {"shot": SHOT, "source": str(shot_dir / "plate/plate.%04d.exr"),
            "target": str(shot_dir / "fixed/fixed.%04d.exr"), "train": {"max_minutes": float(minutes)}}
    if preset:
        user["model"] = {"preset": preset}
    if device:
        user["train"]["device"] = device
        user["infer"] = {"device": device}
    user = merge_settings(user, settings or {})
    resolve(user, origin="bench shot")  # a bad setting fails now, before the shot is written
    return user


def check_device(device: str | None) -> None:
    """A device that is not here fails now, not after minutes of writing frames."""
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DuplidogError(f"--device {device}: no CUDA GPU is available here")


def run_workflow(shot_file: Path, run_dir: Path) -> float:
    """Snakemake with the local profile on ``shot_file`` in ``run_dir`` (cleared first, so every job
    runs); its output goes to ``run_dir/snakemake.log``. Returns the wall seconds."""
    snakefile = ROOT / "Snakefile"
    if not snakefile.is_file():
        raise DuplidogError(f"{snakefile}: not found; bench shot runs from a checkout of duplidog (pip install -e)")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    # The jobs' interpreter is this one (Snakemake runs scripts with the `python` on PATH).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(run_dir),
               "--profile", str(ROOT / "profiles/local"), "--configfile", str(shot_file)]
    log_path = run_dir / "snakemake.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise DuplidogError(f"the pipeline failed (snakemake exit {done.returncode}): "
                            f"{_last_error(log_path)}; see {log_path}")
    return seconds


def _last_error(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if "Error" in line]
    return lines[-1] if lines else "no error line in the log"


def _benchmark_seconds(path: Path) -> float:
    with open(path, newline="") as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def read_figures(run_dir: Path) -> dict:
    """Each stage's seconds (from the benchmark files) and the figures the jobs wrote."""
    benchmarks, results = run_dir / "benchmarks" / SHOT, ShotLayout(run_dir / "results", SHOT)
    chunks = sorted((benchmarks / "infer").glob("*.tsv"))
    stages = {name: _benchmark_seconds(benchmarks / f"{name}.tsv") for name in ("ingest", "pool", "train")}
    stages["infer"] = sum(_benchmark_seconds(path) for path in chunks)
    stages["assemble"] = _benchmark_seconds(benchmarks / "assemble.tsv")
    trained = json.loads(results.train.result.read_text())
    with open(results.train.metrics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Rows of validations alone have no time; the last timed row is the loop's last logged step.
    timed = [float(row["elapsed_s"]) for row in rows if row.get("elapsed_s")]
    loop_seconds = timed[-1] if timed else None
    summaries = [json.loads(path.read_text()) for path in results.chunk_summaries()]
    return {
        "stages": stages,
        "infer_jobs": len(chunks),
        "train": {"steps": trained["steps"], "stopped_by": trained["stopped_by"], "device": trained["device"],
                  "precision": trained["precision"], "data": trained.get("data"), "loop_seconds": loop_seconds,
                  "steps_per_second": trained["steps"] / loop_seconds if loop_seconds else None,
                  "validation_psnr": trained.get("validation_psnr"),
                  "validation_psnr_identity": trained.get("validation_psnr_identity")},
        "infer": {"frames": sum(s["frames"] for s in summaries),
                  "seconds_in_jobs": sum(s["seconds"] for s in summaries),
                  "devices": sorted({s["device"] for s in summaries})},
    }


def format_report(result: dict) -> str:
    """The printout: the stage table, then training and inference rates and the validation PSNR."""
    stages, total = result["stages"], result["total_seconds"]
    rows = [(name if name != "infer" else f"infer ({result['infer_jobs']} jobs)", stages[name]) for name in STAGES]
    rows.append(("snakemake (start, DAG, between jobs)", total - sum(stages.values())))
    lines = [f"bench shot: {result['frames']} frames {result['width']}x{result['height']}, keyframes "
             f"{result['keyframes']}, preset {result['preset']}, training budget {result['minutes']:g} min, "
             f"device {result['device']}",
             f"shot {'written' if result['shot_written'] else 'kept from an earlier run'} "
             f"in {result['shot_seconds']:.1f} s (not counted): {result['shot_dir']}",
             f"{'stage':<38}{'seconds':>9}{'share':>8}"]
    lines += [f"{name:<38}{seconds:>9.1f}{100 * seconds / total:>7.1f}%" for name, seconds in rows]
    lines.append(f"{'total':<38}{total:>9.1f}{100.0:>7.1f}%")
    train, infer = result["train"], result["infer"]
    if train["steps_per_second"]:
        rate = (f"{train['steps_per_second']:.2f} steps/s in the loop ({train['loop_seconds']:.1f} s of the job's "
                f"{stages['train']:.1f} s)")
    else:
        rate = f"no step logged in the job's {stages['train']:.1f} s"
    lines.append(f"train: {train['steps']} steps, {rate}, stopped by {train['stopped_by']}; device {train['device']}, "
                 f"{train['precision']}, data {train['data']}")
    inside = infer["frames"] / infer["seconds_in_jobs"] if infer["seconds_in_jobs"] else 0.0
    lines.append(f"infer: {infer['frames']} frames, {infer['frames'] / stages['infer']:.2f} frames/s over its jobs, "
                 f"{inside:.2f} frames/s from first read to last write inside them; device "
                 f"{', '.join(infer['devices'])}")
    if train["validation_psnr"] is None:
        lines.append("validation: none (fewer keyframes than ingest.min_keyframes_for_validation)")
    else:
        gain = train["validation_psnr"] - train["validation_psnr_identity"]
        lines.append(f"validation PSNR {train['validation_psnr']:.2f} dB against {train['validation_psnr_identity']:.2f} "
                     f"dB doing nothing ({gain:+.2f} dB)")
    return "\n".join(lines)


def bench_shot(width: int = 1920, height: int = 1080, frames: int = 100, keyframes: int = 4, minutes: float = 3.0,
               preset: str | None = None, device: str | None = None, out: str | Path = "results/bench_shot",
               settings: dict | None = None, seed: int = 0) -> dict:
    """Write the shot (kept in ``out/shot`` for the next run of the same size), run the workflow in
    ``out/run`` and print the table; the figures also go to ``out/bench_shot.json``."""
    import yaml

    if width < 8 or height < 8 or frames < 2:
        raise DuplidogError(f"bench shot: give at least 8x8 pixels and 2 frames, not {width}x{height}, {frames}")
    out = Path(out).resolve()
    shot_dir = out / "shot"
    user = shot_settings(shot_dir, minutes, preset, device, settings)
    check_device(device)
    started = time.perf_counter()
    _, written = write_shot(shot_dir, width, height, frames, keyframes, seed)
    shot_seconds = time.perf_counter() - started
    shot_file = out / "bench_shot.yaml"
    shot_file.write_text(yaml.safe_dump(user, sort_keys=False))
    total = run_workflow(shot_file, out / "run")
    result = {"width": width, "height": height, "frames": frames, "keyframes": spread_keyframes(frames, keyframes),
              "preset": preset or "default", "minutes": minutes, "device": device or "auto",
              "shot_dir": str(shot_dir), "shot_written": written, "shot_seconds": shot_seconds,
              "total_seconds": total, **read_figures(out / "run")}
    from duplidog.atomic import atomic_write_json

    atomic_write_json(out / "bench_shot.json", result)
    print(format_report(result))
    return result
