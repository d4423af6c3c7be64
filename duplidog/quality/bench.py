"""Does a trained model beat the peer and the simple baselines on the frames it never saw?

For each photographic shot (``duplidog.quality.photos``: plates, keyframes and the truth on every
frame), duplidog's stages run as plain functions (ingest, pool, train for ``minutes``, infer the
non-key frames) and the non-key frames are scored (``scores.score_shot``) beside TuNet trained on the
same keyframes for the same minutes (``peer.run_tunet``), doing nothing (the plate) and a per-channel
curve fitted on the keyframes. A shot is written once per kind/size/frames/seed and kept, so TuNet's
result (minutes per shot) is reused and several duplidog settings (``tag``) can be compared on it:
``<out_dir>/<kind>/`` holds the shot, ``tunet/`` and one ``duplidog_<tag>/`` per setting.

The upscaling shots (``upscale2``, ``upscale3``: ``duplidog.quality.upscaling``) are named explicitly
or as "upscale". There "nothing" is the plate enlarged bicubically (OpenImageIO's resize), the bar is
duplidog at least 2 dB PSNR over it, and TuNet and the curve have no row: neither can upscale.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from duplidog.quality.scores import curve_baseline, score_shot

METHODS = ("duplidog", "tunet", "nothing", "curve")
STAMP = "bench_shot.json"
# The bars: (metric, duplidog's least margin over TuNet). By kind, then by task.
KIND_BARS = {"paintout": ("region_psnr", 3.0), "beauty": ("region_psnr", 3.0),
             "degrain": ("psnr", 1.0), "look": ("psnr", 1.0)}
TASK_BARS = {"cleanup": ("region_psnr", 3.0), "grade": ("psnr", 1.0), "roto": ("iou", 0.02)}
# Tasks whose bar is a margin over doing nothing (for an upscale: bicubic), since no peer can do them.
NOTHING_BARS = {"upscale": ("psnr", 2.0)}
NO_PEER = {"upscale": "TuNet cannot upscale (its output is its input's size)"}


# -- shots -----------------------------------------------------------------------------------------
def shot_kinds(shots: Iterable[str] | str | None) -> tuple[str, ...]:
    """``None`` -> the photo shots; "aside" -> the aside shots; "all" -> both; "upscale" -> the upscaling
    shots; "a,b" -> those."""
    from duplidog.quality import photos
    from duplidog.quality.upscaling import UPSCALE_SHOTS

    if shots is None:
        return tuple(photos.PHOTO_SHOTS)
    if isinstance(shots, str):
        if shots == "all":
            return tuple(photos.PHOTO_SHOTS) + tuple(photos.ASIDE_SHOTS)
        if shots == "aside":
            return tuple(photos.ASIDE_SHOTS)
        if shots == "upscale":
            return tuple(UPSCALE_SHOTS)
        shots = [s.strip() for s in shots.split(",") if s.strip()]
    return tuple(shots)


def _photos_hash(kind: str = "") -> str:
    from duplidog.quality import photos, upscaling

    modules = [photos] + ([upscaling] if kind in upscaling.UPSCALE_SHOTS else [])
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in modules)).hexdigest()[:16]


def _read_like(path: Path, names: Sequence[str] | None = None) -> np.ndarray:
    """The pixels of ``path``; only the channels ``names`` (in that order) where the file has others too."""
    from duplidog import imageio

    if names is not None and list(imageio.read_info(path).channel_names) != list(names):
        return imageio.read_pixels(path, names)
    return imageio.read_pixels(path)


def load_shot(directory: str | Path) -> dict:
    """A written shot read back: "kind", "config", "meta" (shot.json), "plates" and "truth" (every frame)."""
    directory = Path(directory)
    stamp = json.loads((directory / STAMP).read_text())
    meta = json.loads((directory / "shot.json").read_text())
    ext, frames = meta["ext"], range(int(meta["first"]), int(meta["last"]) + 1)
    plates = {f: _read_like(directory / f"plate/plate.{f:04d}.{ext}") for f in frames}
    truth = {f: _read_like(directory / f"truth/truth.{f:04d}.{ext}") for f in frames}
    return {"kind": stamp["kind"], "directory": directory, "config": stamp["config"], "meta": meta,
            "plates": plates, "truth": truth}


def prepare_shot(kind: str, directory: str | Path, size: tuple[int, int] = (480, 270), frames: int = 12,
                 seed: int = 0) -> dict:
    """Write shot ``kind`` into ``directory`` unless it already holds it (same kind, size, frames, seed and
    photos.py), then read it back (``load_shot``), so a kept shot and a new one are scored alike."""
    from duplidog.quality.photos import write_photo_shot
    from duplidog.quality.upscaling import UPSCALE_SHOTS, write_upscale_shot

    directory = Path(directory)
    wanted = {"kind": kind, "size": [int(size[0]), int(size[1])], "frames": int(frames), "seed": int(seed),
              "photos": _photos_hash(kind)}
    stamp_path = directory / STAMP
    if stamp_path.is_file() and (directory / "shot.json").is_file():
        try:
            stamp = json.loads(stamp_path.read_text())
            if all(stamp.get(k) == v for k, v in wanted.items()):
                return load_shot(directory)
        except Exception:  # noqa: BLE001 - an unreadable stamp or frame: write the shot again
            pass
    # A new shot: what the old one left (frames past a shorter range, TuNet's result) must not stay.
    for name in ("plate", "fixed", "truth", "tunet"):
        shutil.rmtree(directory / name, ignore_errors=True)
    for name in ("shot.json", STAMP):
        (directory / name).unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    write = write_upscale_shot if kind in UPSCALE_SHOTS else write_photo_shot
    written = write(kind, directory, size=tuple(size), frames=frames, seed=seed)
    stamp_path.write_text(json.dumps({**wanted, "config": written["config"]}, indent=2) + "\n")
    return load_shot(directory)


def unseen_frames(meta: dict) -> list[int]:
    keys = set(meta["keyframes"])
    return [f for f in range(int(meta["first"]), int(meta["last"]) + 1) if f not in keys]


def _tag_name(tag: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", str(tag)):
        raise ValueError(f"tag {tag!r}: use letters, digits, '.', '_' or '-'")
    return str(tag)


# -- the methods -----------------------------------------------------------------------------------
def evaluate_duplidog(shot: str | Path | dict, settings: dict | None = None, minutes: float | None = 3.0,
                      tag: str = "default", steps: int | None = None) -> dict:
    """Train duplidog on a written shot (its directory, or ``load_shot``'s dict) and score the non-key frames.

    ``settings`` is a partial shot config (as a shot file would hold it), merged with
    ``train.max_minutes = minutes``, ``train.steps = steps`` (only when given) and ``train.progress =
    False``. Everything goes into ``<shot>/duplidog_<tag>/`` (the pipeline's layout of a shot, with
    ``<shot>`` as the results folder), cleared first so the run starts afresh; its scores also into
    ``scores.json`` there. Returns "tag", "scores" (``score_shot``), "steps",
    "train_seconds", "steps_per_second", "stopped_by", "infer_seconds", "settings" and "dir".
    """
    from duplidog.core.layout import ShotLayout
    from duplidog.infer import infer_frames
    from duplidog.ingest import ingest
    from duplidog.pool import build_pool
    from duplidog.settings import merge_settings, resolve
    from duplidog.train import train

    if not isinstance(shot, dict):
        shot = load_shot(shot)
    meta, kind = shot["meta"], shot["kind"]
    layout = ShotLayout(shot["directory"], f"duplidog_{_tag_name(tag)}")
    work = layout.root
    shutil.rmtree(work, ignore_errors=True)
    forced = {"progress": False}
    if minutes:  # 0 or None with ``steps``: a step count alone (comparisons that a loaded CPU cannot skew)
        forced["max_minutes"] = float(minutes)
    if steps is not None:
        forced["steps"] = int(steps)
    user = merge_settings(settings or {}, {"train": forced})
    shot_config = {**shot["config"], "output": str(work / f"out/out.%04d.{meta['ext']}")}
    config = resolve(merge_settings(user, shot_config), origin=f"quality shot {kind} ({tag})")
    plan = ingest(config, layout.ingest_dir)
    unseen = unseen_frames(meta)
    if sorted(plan.keyframes) != sorted(meta["keyframes"]) or not set(unseen) <= set(plan.frames):
        raise RuntimeError(f"quality shot {kind}: ingest found keyframes {plan.keyframes}, "
                           f"shot.json says {meta['keyframes']}")
    build_pool(layout.manifest, layout.plan, layout.pool, config["pool"], seed=config["seed"])
    started = time.perf_counter()
    trained = train(layout.pool, layout.plan, layout.manifest, layout.model_dir, layout.train.dir, config)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    infer_frames(layout.model_dir, layout.plan, unseen, None, settings=config["infer"])
    infer_seconds = time.perf_counter() - started
    names = _truth_channels(shot)
    outputs = {f: _read_like(work / f"out/out.{f:04d}.{meta['ext']}", names) for f in unseen}
    scores = score_shot(outputs, shot["truth"], scored_plates(shot), meta["task"], meta["encoding"])
    result = {"tag": tag, "scores": scores, "steps": trained["steps"], "train_seconds": round(train_seconds, 1),
              "steps_per_second": round(trained["steps"] / train_seconds, 2) if train_seconds else None,
              "stopped_by": trained.get("stopped_by"), "infer_seconds": round(infer_seconds, 1),
              "settings": user, "dir": str(work)}
    (work / "scores.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _truth_channels(shot: dict) -> list[str]:
    from duplidog import imageio

    meta = shot["meta"]
    return list(imageio.read_info(Path(shot["directory"]) / f"truth/truth.{int(meta['first']):04d}.{meta['ext']}")
                .channel_names)


def scored_plates(shot: dict) -> dict:
    """The plates the scores compare with (where the fix acts): an upscale shot's enlarged bicubically."""
    scale = int(shot["meta"].get("scale", 1))
    if scale == 1:
        return shot["plates"]
    from duplidog.quality.upscaling import bicubic

    return {f: bicubic(p, scale) for f, p in shot["plates"].items()}


def evaluate_baselines(shot: dict) -> dict:
    """Doing nothing (the plate; None for roto, where it means nothing) and the curve fitted on the
    keyframes, scored on the non-key frames."""
    meta = shot["meta"]
    unseen, keys = unseen_frames(meta), list(meta["keyframes"])
    task, encoding = meta["task"], meta["encoding"]
    if int(meta.get("scale", 1)) > 1:  # doing nothing is a bicubic enlargement; a curve cannot upscale
        plates = scored_plates(shot)
        return {"nothing": score_shot({f: plates[f] for f in unseen}, shot["truth"], plates, task, encoding),
                "curve": None}
    curve = dict(zip(unseen, curve_baseline([shot["plates"][f] for f in keys], [shot["truth"][f] for f in keys],
                                            [shot["plates"][f] for f in unseen])))
    nothing = None if task == "roto" else score_shot({f: shot["plates"][f] for f in unseen}, shot["truth"],
                                                     shot["plates"], task, encoding)
    return {"nothing": nothing, "curve": score_shot(curve, shot["truth"], shot["plates"], task, encoding)}


def evaluate_tunet(shot: dict, minutes: float, reuse: bool = True, driver: str | Path | None = None) -> dict:
    """TuNet on the shot for ``minutes`` (``peer.run_tunet`` into ``<shot>/tunet/``), scored on the non-key
    frames: "scores" (None with "error" when the peer could not run), "steps", "train_s", "reuse"."""
    from duplidog.quality.peer import run_tunet

    meta = shot["meta"]
    if meta["task"] in NO_PEER:
        return {"scores": None, "error": NO_PEER[meta["task"]]}
    ran = run_tunet(shot["directory"], Path(shot["directory"]) / "tunet", minutes, driver=driver, reuse=reuse)
    if "error" in ran:
        return {"scores": None, "error": ran["error"]}
    unseen = unseen_frames(meta)
    outputs = {f: ran["outputs"][f] for f in unseen}
    scores = score_shot(outputs, shot["truth"], shot["plates"], meta["task"], meta["encoding"])
    info = {k: v for k, v in ran.items() if k != "outputs"}
    return {"scores": scores, "error": None, **info}


# -- the bench -------------------------------------------------------------------------------------
def bar_for(kind: str, task: str) -> tuple[str, float]:
    """The bar's (metric, margin over TuNet) for shot ``kind`` (an ``*_aside`` shot as its task's shot)."""
    return (KIND_BARS.get(kind.removesuffix("_aside")) or TASK_BARS.get(task) or NOTHING_BARS.get(task)
            or ("psnr", 1.0))


def _diff(a, b):
    return None if a is None or b is None else a - b


def check_bar(row: dict) -> dict:
    """The issue's bar on ``row``: duplidog >= TuNet + margin on the shot's metric, never below doing
    nothing; also duplidog's margin over the best other method. "holds" is None without TuNet."""
    metric, needed = bar_for(row["shot"], row["task"])

    def value(method):
        scores = row.get(method)
        return None if scores is None else scores.get(metric)

    ours = value("duplidog")
    others = {m: value(m) for m in METHODS[1:] if value(m) is not None}
    best = max(others, key=others.get) if others else None
    vs_tunet, vs_nothing = _diff(ours, value("tunet")), _diff(ours, value("nothing"))
    beats_tunet = None if vs_tunet is None else bool(vs_tunet >= needed)
    above_nothing = None if vs_nothing is None else bool(vs_nothing >= 0)
    holds = None if beats_tunet is None else bool(beats_tunet and above_nothing is not False)
    if row["task"] in NOTHING_BARS:  # no peer can do it: the margin is over doing nothing
        above_nothing = None if vs_nothing is None else bool(vs_nothing >= needed)
        holds = above_nothing
    return {"metric": metric, "needed": needed, "best_other": best,
            "vs_best": _diff(ours, others.get(best)) if best else None,
            "vs_tunet": vs_tunet, "beats_tunet": beats_tunet, "vs_nothing": vs_nothing,
            "above_nothing": above_nothing, "holds": holds}


def bench_quality(shots: Iterable[str] | str | None = None, minutes: float = 3.0, steps: int | None = None,
                  out_dir: str | Path | None = None, settings: dict | None = None,
                  size: tuple[int, int] = (480, 270), frames: int = 12, peer: bool = True,
                  reuse_peer: bool = True, tag: str = "default", seed: int = 0,
                  driver: str | Path | None = None) -> list[dict]:
    """Every shot of ``shots`` (default ``photos.PHOTO_SHOTS``; also "aside", "all" or "a,b") scored for
    duplidog (``settings``, ``minutes``, ``steps``: see ``evaluate_duplidog``), TuNet (``peer``; its
    kept result reused with ``reuse_peer``), doing nothing and the curve. One row per shot.

    ``out_dir`` keeps the shots, TuNet's results and duplidog's runs (default: a temporary folder,
    nothing kept). Row: shot, tag, task, encoding, frames (scored), minutes; per method a dict of
    scores (``score_shot``) or None; steps, train_seconds, steps_per_second, stopped_by of duplidog;
    tunet_steps, tunet_train_s, tunet_steps_per_second, tunet_reused, tunet_error; and "bar"
    (``check_bar``).
    """
    kinds = shot_kinds(shots)
    with tempfile.TemporaryDirectory(prefix="duplidog-quality-") as scratch:
        root = Path(out_dir) if out_dir is not None else Path(scratch)
        rows = []
        for kind in kinds:
            shot = prepare_shot(kind, root / kind, size=size, frames=frames, seed=seed)
            meta = shot["meta"]
            ours = evaluate_duplidog(shot, settings, minutes, tag=tag, steps=steps)
            baselines = evaluate_baselines(shot)
            theirs = evaluate_tunet(shot, minutes, reuse=reuse_peer, driver=driver) if peer else \
                {"scores": None, "error": "not asked for (peer=False)"}
            steps_t, train_t = theirs.get("steps"), theirs.get("train_s")
            row = {"shot": kind, "tag": tag, "task": meta["task"], "encoding": meta["encoding"],
                   "frames": len(unseen_frames(meta)), "minutes": minutes,
                   "duplidog": ours["scores"], "tunet": theirs["scores"], **baselines,
                   "steps": ours["steps"], "train_seconds": ours["train_seconds"],
                   "steps_per_second": ours["steps_per_second"], "stopped_by": ours["stopped_by"],
                   "tunet_steps": steps_t, "tunet_train_s": train_t,
                   "tunet_steps_per_second": round(steps_t / train_t, 2)
                   if isinstance(steps_t, (int, float)) and isinstance(train_t, (int, float)) and train_t else None,
                   "tunet_reused": theirs.get("reuse"), "tunet_error": theirs.get("error")}
            row["bar"] = check_bar(row)
            rows.append(row)
        return rows


# -- the table -------------------------------------------------------------------------------------
COLUMNS = (("PSNR", "psnr", 2), ("region PSNR", "region_psnr", 2), ("worst block", "worst_block", 2),
           ("tPSNR", "flicker", 2), ("IoU", "iou", 3), ("MAE", "mae", 4))
METRIC_NAMES = {"psnr": "PSNR", "region_psnr": "region PSNR", "iou": "IoU"}


def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:.{digits}f}"
    return str(value)


def _signed(value, digits: int) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def format_table(rows: Sequence[dict]) -> str:
    """One block per shot: a line per method, then duplidog's margin over the best other method and
    whether the issue's bar holds; TuNet's reasons for a "-" under the table."""
    blocks, reasons = [], {}
    header = ("method",) + tuple(name for name, _, _ in COLUMNS)
    for row in rows:
        title = (f"{row['shot']} ({row['task']}, {row['encoding']}, {row['frames']} frames scored, "
                 f"tag {row.get('tag', 'default')})")
        steps = f"duplidog {_cell(row.get('steps'))} steps in {_cell(row.get('train_seconds'), 1)} s " \
                f"({_cell(row.get('steps_per_second'), 2)}/s, stopped by {_cell(row.get('stopped_by'))})"
        if row.get("tunet") is not None:
            steps += (f"; tunet {_cell(row.get('tunet_steps'))} steps in {_cell(row.get('tunet_train_s'), 1)} s "
                      f"({_cell(row.get('tunet_steps_per_second'), 2)}/s{', kept' if row.get('tunet_reused') else ''})")
        elif row.get("tunet_error"):
            reasons.setdefault(row["tunet_error"], []).append(row["shot"])
        lines = [header]
        for method in METHODS:
            scores = row.get(method)
            lines.append((method,) + tuple("-" if scores is None else _cell(scores.get(key), digits)
                                           for _, key, digits in COLUMNS))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        table = ["  " + "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
        bar = row.get("bar") or check_bar(row)
        metric, needed = bar["metric"], bar["needed"]
        digits = 3 if metric == "iou" else 2
        unit = "" if metric == "iou" else " dB"
        name = METRIC_NAMES.get(metric, metric)
        margin = f"  duplidog - best other ({bar['best_other'] or '-'}): {name} {_signed(bar['vs_best'], digits)}{unit}"
        verdict = {True: "holds", False: "FAILS", None: "not checked (no TuNet)"}[bar["holds"]]
        check = (f"  bar: duplidog >= tunet {needed:+g}{unit} {name} ({_signed(bar['vs_tunet'], digits)}) "
                 f"and >= nothing ({_signed(bar['vs_nothing'], digits)}): {verdict}")
        if row["task"] in NOTHING_BARS:
            check = (f"  bar: duplidog >= nothing (bicubic) {needed:+g}{unit} {name} "
                     f"({_signed(bar['vs_nothing'], digits)}): {verdict}")
        blocks.append("\n".join([title, "  " + steps] + table + [margin, check]))
    checked = [r for r in rows if (r.get("bar") or check_bar(r))["holds"] is not None]
    held = [r for r in checked if (r.get("bar") or check_bar(r))["holds"]]
    footer = [f"bars: {len(held)}/{len(checked)} hold" + (f" ({len(rows) - len(checked)} not checked)"
                                                         if len(checked) < len(rows) else "")]
    for reason, shots in reasons.items():
        footer.append(f"tunet -: {reason} [{', '.join(shots)}]")
    return "\n\n".join(blocks) + "\n\n" + "\n".join(footer)
