"""The ``duplidog`` command: every pipeline stage, usable without Snakemake.

Stage commands take a shot file (``--shot``) and find their files in the same layout as the Snakefile
(``duplidog.core.layout``: ``results/<shot>/...``), so ``duplidog pool --shot sh010.yaml`` after
``duplidog ingest --shot sh010.yaml`` does exactly what the pipeline's rules do. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from duplidog.errors import DuplidogError


def _shot_config(args) -> dict:
    from duplidog import settings

    config = settings.load_shot_file(args.shot) if args.shot else settings.resolve({})
    _apply_sets(config, args.set)
    return settings.resolve(config, origin=args.shot or "config")


def _apply_sets(config: dict, assignments: list[str] | None) -> dict:
    """``--set section.key=value`` (the value read as YAML) written into ``config``."""
    import yaml

    for assignment in assignments or []:
        key, _, value = assignment.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _number_if_written_as_one(yaml.safe_load(value))
    return config


def _number_if_written_as_one(value):
    """YAML 1.1 reads ``2e-3`` (no dot) as a string; on a command line it means the number."""
    import re

    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value):
        return float(value)
    return value


def _layout(args, config):
    from duplidog.core.layout import ShotLayout

    return ShotLayout(args.results or "results", config["shot"])


def cmd_demo(args) -> None:
    from duplidog.demo import write_demo

    shot_file = write_demo(args.directory)
    print(f"demo shot written: {shot_file}")
    print(f"run it: snakemake --profile profiles/local --configfile {shot_file}")


def cmd_config(args) -> None:
    import yaml

    from duplidog import settings

    if args.describe:
        print(settings.described_defaults(), end="")
    else:
        print(yaml.safe_dump(settings.defaults(), sort_keys=False), end="")


def cmd_status(args) -> None:
    from duplidog import status

    print(status.format_table(status.find_shots(args.results)))


def cmd_ingest(args) -> None:
    from duplidog.ingest import ingest

    config = _shot_config(args)
    plan = ingest(config, _layout(args, config).ingest_dir)
    print(f"{config['shot']}: {len(plan.frames)} frames, keyframes {plan.keyframes}")


def cmd_pool(args) -> None:
    from duplidog.pool import build_pool

    config = _shot_config(args)
    layout = _layout(args, config)
    stats = build_pool(layout.manifest, layout.plan, layout.pool, config["pool"], seed=config["seed"])
    print(json.dumps(stats, indent=2, default=str))


def cmd_train(args) -> None:
    from duplidog.train import train
    from duplidog.train.distributed import process_group

    config = _shot_config(args)
    layout = _layout(args, config)
    # Under torchrun (or srun with a task per GPU) each process joins the run and takes its share of every batch.
    with process_group() as launch:
        metrics = train(pool_path=layout.pool, plan_path=layout.plan, manifest_path=layout.manifest,
                        model_dir=layout.model_dir, work_dir=layout.train.dir, config=config)
    if launch is not None and launch.rank != 0:
        return
    from duplidog.train.finish import summary_line

    print(f"{summary_line(metrics)} (details: {layout.train.result})")


def cmd_infer(args) -> None:
    from duplidog.infer import infer_sequence
    from duplidog.sequence import parse_frame_range
    from duplidog.settings import resolve

    given = _apply_sets({}, args.set)
    named = [f"infer.{name}={getattr(args, name)}" for name in ("tile", "device", "precision")
             if getattr(args, name) is not None]
    given = _apply_sets(given, named)  # read like --set: "--tile 512" is the number 512
    unknown = sorted(set(given) - {"infer"})
    if unknown:
        raise DuplidogError(f"infer --set: only infer.* settings apply here, not {', '.join(unknown)}")
    settings = resolve(given, origin="infer --set")["infer"]
    summary = infer_sequence(model_dir=args.model, source_pattern=args.source, output_pattern=args.output,
                             frames=parse_frame_range(args.frames), settings=settings,
                             convert_colorspace=args.convert_colorspace)
    print(f"infer: {summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.2f} frames/s) "
          f"to {args.output}")


def cmd_assemble(args) -> None:
    from duplidog.assemble import assemble
    from duplidog.core.layout import shot_output_pattern

    config = _shot_config(args)
    summary = assemble(_layout(args, config), output_pattern=shot_output_pattern(config), settings=config["assemble"])
    print(json.dumps(summary, indent=2, default=str))


def cmd_bench(args) -> None:
    if args.what == "quality":
        _bench_quality(args)
        return
    if args.what == "shot":
        from duplidog.bench.shot import bench_shot

        bench_shot(width=args.width, height=args.height, frames=args.frames or 100, keyframes=args.keyframes,
                   minutes=args.minutes, preset=args.preset, device=args.device, out=args.out or "results/bench_shot",
                   settings=_apply_sets({}, args.set))
        return
    if args.what == "infer":
        from duplidog.bench.infer import bench_infer

        bench_infer(preset=args.preset, frames=args.frames or 2, device=args.device, tile=args.tile,
                    width=args.width, height=args.height, threads=args.threads, model=args.model)
        return
    if args.what == "train":
        from duplidog.bench.train import bench_train as bench
    else:
        from duplidog.bench.pool import bench_pool as bench
    bench()


def _bench_quality(args) -> None:
    from duplidog.quality import bench_quality, format_table
    from duplidog.settings import resolve

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise DuplidogError(f"--size {args.size}: give WIDTHxHEIGHT, e.g. 480x270") from None
    settings = _apply_sets({}, args.set)
    resolve(settings, origin="--set")  # a bad --set fails here, not after the first shot
    out = Path(args.out or "results/bench_quality")
    rows = bench_quality(shots=args.shots, minutes=args.minutes, steps=args.steps, out_dir=out, settings=settings,
                         size=(width, height), frames=args.frames or 12, peer=args.peer == "tunet",
                         reuse_peer=not args.retrain_peer, tag=args.tag)
    name = "quality.json" if args.tag == "default" else f"quality_{args.tag}.json"
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(format_table(rows))
    print(f"rows: {out / name}")


def cmd_models(args) -> None:
    from duplidog import model_list

    if args.action == "list":
        print(model_list.format_table(model_list.find_models(args.paths or ["results"])))
    else:
        print(model_list.format_card(args.paths[0] if args.paths else "."))


def cmd_export(args) -> None:
    from duplidog import export

    ensemble = args.ensemble if args.ensemble == "auto" else int(args.ensemble)
    result = export.export(args.model, args.to, args.out, ensemble)
    print(json.dumps(result, indent=2, default=str))


def _version() -> str:
    from duplidog import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duplidog", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"duplidog {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name, func, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--shot", help="shot YAML file (default: the built-in demo shot)")
        p.add_argument("--results", help="results folder (default: results)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a setting, e.g. --set train.steps=200 (repeatable)")
        p.set_defaults(func=func)
        return p

    p = sub.add_parser("demo", help="write the built-in demo shot (plates, fixed keyframes, shot file)")
    p.add_argument("directory")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("config", help="print the default settings")
    p.add_argument("--describe", action="store_true", help="each setting under its description, as comments")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("status", help="where each shot stands: stage, steps, validation PSNR, frames delivered")
    p.add_argument("results", nargs="?", default="results", help="results folder (default: results)")
    p.set_defaults(func=cmd_status)
    stage("ingest", cmd_ingest, "find frames, check headers, write manifest and plan")
    stage("pool", cmd_pool, "build the Zarr tile pool from the keyframes")
    stage("train", cmd_train, "train the model on the pool")
    stage("assemble", cmd_assemble, "check every output frame, write checksums and QC")

    p = sub.add_parser("infer", help="apply a model to a sequence")
    p.add_argument("--model", required=True, help="model folder (model.json + model.safetensors)")
    p.add_argument("--source", required=True, help="source pattern, e.g. plate.%%04d.exr")
    p.add_argument("--output", required=True, help="output pattern")
    p.add_argument("--frames", help="frame range, e.g. 1001-1010 (default: every source frame)")
    p.add_argument("--tile", help="auto | none | tile size in pixels (default: infer.tile)")
    p.add_argument("--device", help="cuda | mps | cpu (default: infer.device, the best available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: infer.precision")
    p.add_argument("--convert-colorspace", action="store_true",
                   help="convert frames tagged with another OpenColorIO space than the model's (default: refuse them)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an infer setting, e.g. --set infer.ensemble=1 (repeatable)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("bench", help="measure speed (ratios against a reference) or quality (against TuNet)")
    p.add_argument("what", choices=["pool", "train", "infer", "quality", "shot"],
                   help="quality: duplidog against TuNet, doing nothing and a fitted curve, on unseen frames; "
                        "shot: a whole shot (--width --height --frames (100) --keyframes --preset --device) through "
                        "the Snakemake workflow, seconds per stage")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="quality: training minutes per shot, duplidog (train.max_minutes) and TuNet alike (3); "
                        "shot: the training budget (3)")
    p.add_argument("--steps", type=int, help="quality: duplidog's training steps (default: train.steps)")
    p.add_argument("--shots", help="quality: paintout,look,... | aside | all | upscale (default: the photo shots)")
    p.add_argument("--size", default="480x270", help="quality: frame size WIDTHxHEIGHT (480x270)")
    p.add_argument("--frames", type=int,
                   help="quality: frames per shot (12); infer: frames run (2); shot: frames (100)")
    p.add_argument("--width", type=int, default=1920, help="infer, shot: frame width (1920)")
    p.add_argument("--height", type=int, default=1080, help="infer, shot: frame height (1080)")
    p.add_argument("--preset", default="small",
                   help="infer: the network's preset without --model; shot: model.preset (small)")
    p.add_argument("--model", help="infer: a trained model folder (default: an untrained --preset network)")
    p.add_argument("--device", help="infer, shot: where the network runs (default: auto)")
    p.add_argument("--tile", type=int, help="infer: tile size of the tiled run (default: two tiles across)")
    p.add_argument("--threads", type=int, help="infer: torch CPU threads (default: torch's choice)")
    p.add_argument("--keyframes", type=int, default=4, help="shot: keyframes, spread over the shot (4)")
    p.add_argument("--out", help="quality: where shots, runs and quality.json are kept (results/bench_quality); "
                                 "shot: where the shot, the run and bench_shot.json are kept (results/bench_shot)")
    p.add_argument("--peer", default="tunet", choices=["tunet", "none"],
                   help="quality: train TuNet beside duplidog (needs TUNET_DIR, TUNET_VENV; see README)")
    p.add_argument("--retrain-peer", action="store_true", help="quality: retrain TuNet even if a kept result fits")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="quality, shot: override a duplidog setting, e.g. --set model.preset=medium (repeatable)")
    p.add_argument("--tag", default="default",
                   help="quality: name of this duplidog run, to compare settings on the same kept shots")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("models", help="list or show trained models")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("paths", nargs="*")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export a model for Nuke (TorchScript) or Flame (ONNX)")
    p.add_argument("model")
    p.add_argument("--to", required=True, choices=["nuke", "flame"])
    p.add_argument("--ensemble", default="auto", choices=["auto", "1", "2", "4", "8"],
                   help="flipped and turned copies averaged inside the file, as infer.ensemble (auto: 8 for "
                        "a matte, else 1)")
    p.add_argument("out")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except DuplidogError as error:
        print(f"duplidog: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a full disk met outside an atomic write is the user's to fix, not a bug
        from duplidog.atomic import environment_error

        clear = environment_error(error)
        if clear is None:
            raise
        print(f"duplidog: error: {clear}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
