# Helpers shared by every rule: the shots of this run, their frames and chunks, and rule inputs.
# Frames are found from the patterns when the DAG is built, so a dry run shows every job.
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from duplidog import demo, temporal
from duplidog.core.layout import ShotLayout, shot_output_pattern
from duplidog.core.shotframes import (ingest_settings, check_output_pattern, check_output_writable, discover_frames,
                                      neighbour_frames, ShotFrames)
from duplidog.errors import DuplidogError
from duplidog.sequence import FramePattern
from duplidog.status import ReportFigures
from duplidog.settings import merge_settings, read_shot_yaml, resolve

# The config is checked against config/schema.yaml by duplidog's resolver, which names the key in one
# line (Snakemake's own validate prints the whole schema after its message).
try:
    resolve(config, origin="config")
except DuplidogError as error:
    raise WorkflowError(str(error)) from None

# Every shot's files under results/ (rules name them with the {shot} wildcard); RESULTS holds the shots.
RESULTS = "results"
LAYOUT = ShotLayout(RESULTS, "{shot}")

# Keys of a batch config that describe one shot; everything else is shared by all its shots.
SHOT_KEYS = ("shot", "source", "target", "output", "frames")


@dataclass(frozen=True)
class Chunk:
    """A range of frames inferred by one job (one model load)."""

    shot: str
    frames: tuple

    @property
    def name(self):
        return f"{self.frames[0]}-{self.frames[-1]}"

    @property
    def rule_name(self):
        # Snakemake needs a unique identifier per generated rule; profiles configure `infer_chunk`.
        safe = "".join(c if c.isalnum() else "_" for c in self.shot)
        return f"infer_chunk__{safe}__{self.frames[0]}_{self.frames[-1]}"


@dataclass(frozen=True)
class Shot:
    name: str
    config: dict
    frames: ShotFrames
    output: str
    is_demo: bool

    @property
    def layout(self):
        return ShotLayout(RESULTS, self.name)

    @property
    def chunks(self):
        size = self.config["infer"]["chunk_size"]
        frames = self.frames.frames
        return [Chunk(self.name, tuple(frames[i : i + size])) for i in range(0, len(frames), size)]

    def reads(self, frames):
        """The source frames that pooling or inferring `frames` reads: themselves and, with
        model.temporal_frames, their neighbours (mirrored at the shot's ends), also outside a chunk."""
        every = list(self.frames.frames) + list(self.frames.keyframes)
        n = int(self.config["model"].get("temporal_frames", 0))
        return temporal.needed_frames(frames, n, min(every), max(every))


def shot_files_from(entries):
    """Shot files named in `shots:`: YAML files, or .csv/.tsv tables with a `shot_file` column."""
    files = []
    for entry in entries:
        if entry.endswith((".csv", ".tsv")):
            import pandas as pd

            table = pd.read_csv(entry, sep="\t" if entry.endswith(".tsv") else ",")
            if "shot_file" not in table.columns:
                raise DuplidogError(f"{entry}: a shot table needs a `shot_file` column")
            files.extend(str(Path(entry).parent / f) for f in table["shot_file"])
        else:
            files.append(entry)
    return files


def load_shots(config):
    shared = {k: v for k, v in config.items() if k not in SHOT_KEYS + ("shots",)}
    if config.get("shots"):
        entries = []
        for path in shot_files_from(config["shots"]):
            user = read_shot_yaml(path) or {}
            entries.append(resolve(merge_settings(shared, user), origin=path))  # key by key
    else:
        entries = [resolve(config, origin="config")]
    shots = {}
    for shot_config in entries:
        name = shot_config["shot"]
        if name in shots:
            raise DuplidogError(f"shot {name!r} is listed twice; each shot needs its own name")
        is_demo = shot_config["source"] == demo_default("source")
        if is_demo and not FramePattern(shot_config["source"]).existing_frames():
            # The demo is written by a rule of this workflow, so its frames are known before it exists.
            frames = ShotFrames(frames=list(demo.FRAMES), keyframes=list(demo.KEYFRAMES))
        else:
            frames = discover_frames(shot_config)
            try:  # a neighbour frame the shot lacks would be a bare missing input to Snakemake
                neighbour_frames(FramePattern(shot_config["source"]), frames.frames + frames.keyframes,
                                 shot_config["model"]["temporal_frames"])
            except DuplidogError as error:
                raise DuplidogError(f"shot {name}: {error}") from None
        output = shot_output_pattern(shot_config, RESULTS)
        check_output_pattern(output, shot_config["source"], shot_config["target"], frames.frames, writable=False)
        check_output_writable(output, frames.frames)
        shots[name] = Shot(name, shot_config, frames, output, is_demo)
    check_batch_outputs(shots)
    return shots


def check_batch_outputs(shots):
    """Refuse a batch where one shot would write over another's plates or keyframes, or two shots write
    the same output frames: each shot checks its own output against its own source and target only."""
    written = {}
    for shot in shots.values():
        for other in shots.values():
            if other is not shot:
                try:
                    check_output_pattern(shot.output, other.config["source"], other.config["target"],
                                         shot.frames.frames, writable=False)
                except DuplidogError as error:
                    raise DuplidogError(f"shot {shot.name}: {error} of shot {other.name}") from None
        pattern = FramePattern(shot.output)
        for frame in shot.frames.frames:
            path = os.path.realpath(pattern.path(frame))
            if path in written and written[path] != shot.name:
                raise DuplidogError(f"shots {written[path]} and {shot.name} would both write {pattern.path(frame)}; "
                                    "give each its own output")
            written[path] = shot.name


def demo_default(key):
    from duplidog.settings import defaults

    return defaults()[key]


try:
    SHOTS = load_shots(config)
except DuplidogError as error:
    raise WorkflowError(str(error)) from None


def shot_of(wildcards):
    return SHOTS[wildcards.shot]


def keyframe_sources(wildcards):
    """The source frames of the keyframes (and their neighbours, with model.temporal_frames): what training
    learns from, so a change to one reruns ingest and everything after it. Ingest also reads every other
    frame's header, but does not declare them: a replaced plate frame reruns only its inference chunk
    (which checks its size against the plan)."""
    shot = shot_of(wildcards)
    pattern = FramePattern(shot.config["source"])
    return [pattern.path(f) for f in shot.reads(shot.frames.keyframes)]


def target_frames(wildcards):
    shot = shot_of(wildcards)
    pattern = FramePattern(shot.config["target"])
    return [pattern.path(f) for f in shot.frames.keyframes]


def output_frames(wildcards):
    shot = shot_of(wildcards)
    pattern = FramePattern(shot.output)
    return [pattern.path(f) for f in shot.frames.frames]


def output_pattern(wildcards):
    return shot_of(wildcards).output


def ingest_config(wildcards):
    """The settings ingest reads, and only those: a change to any other setting does not rerun it."""
    config = shot_of(wildcards).config
    return ingest_settings(config)


def section(name):
    """A params function giving one config section of the job's shot: a change to it reruns the rule."""

    def params(wildcards):
        return shot_of(wildcards).config[name]

    params.__name__ = f"{name}_settings"
    return params


def init_model(wildcards):
    """A previous shot's model to start training from (train.init_from), as an input so a change reruns."""
    init_from = shot_of(wildcards).config["train"].get("init_from")
    if not init_from or Path(init_from).resolve() == ShotLayout(RESULTS, wildcards.shot).model_dir.resolve():
        return []  # nothing, or the shot's own model: training continues from its checkpoints
    card = Path(init_from) / "model.json"
    # Another shot's model under results/ looks like this run's train output; unless that shot is in this
    # run (then it is trained first), name it by its absolute path so Snakemake takes it as a plain file.
    owner = SHOTS.get(card.parent.parent.name)
    in_this_run = owner is not None and card == owner.layout.model_card
    return [str(card if in_this_run else card.resolve())]


def _resource_value(value):
    # The profile's values arrive parsed (Resource objects); a rule takes plain values or functions.
    return getattr(value, "_evaluator", None) or getattr(value, "value", value)


def profile_resources(rule_name):
    """Resources a profile sets for `rule_name` (set-resources), for rules generated under other names."""
    settings = workflow.resource_settings.overwrite_resources.get(rule_name, {})
    return {name: _resource_value(value) for name, value in settings.items()}


def profile_threads(rule_name, default=1):
    """Threads a profile sets for `rule_name` (set-threads), for rules generated under other names."""
    return _resource_value(workflow.resource_settings.overwrite_threads.get(rule_name, default))


def all_outputs():
    """What a run delivers. The frames and the model are named, not only the QC: Snakemake does not
    remake a missing file that only feeds up-to-date outputs, and a deleted frame must come back."""
    targets = []
    for shot in SHOTS.values():
        targets += [FramePattern(shot.output).path(f) for f in shot.frames.frames]
        layout = shot.layout
        targets += [layout.model_weights, layout.model_card, layout.summary, layout.contact_sheet]
    return targets


# The report opens on each shot's figures (report/workflow.rst). Snakemake renders that page with Jinja and
# gives it only `snakemake.config`, so they go there under a key no setting uses; they are read from
# results/ when the page is rendered (a shot not run yet reads "not run yet"), never by a dry run or a job.
config["_report_shots"] = ReportFigures(SHOTS, RESULTS)


def sweep_stale_temporaries():
    """Remove what writes killed with an earlier run left under each shot's results/ (hidden
    `.<name>.tmp-*` files and folders: a checkpoint, the pool, a frame). Run from `onstart`: no job of
    this run has started yet, and Snakemake's lock keeps other runs out. (A chunk job also removes its
    own frames' leftovers in the delivery folder, which may lie outside results/.)"""
    from duplidog.atomic import sweep_stale_temporaries as sweep

    for shot in SHOTS.values():
        for stale in sweep(shot.layout.root):
            print(f"duplidog: removed {stale}, left by an earlier run that was killed", file=sys.stderr)


def print_run_summary():
    """One line per shot at the end of a successful run: frames delivered and where, the model's steps
    and validation PSNR against doing nothing, the QC sheet (``duplidog status`` prints the same table
    at any time)."""
    from duplidog.status import shot_status, summary_line

    for shot in SHOTS.values():
        print(f"duplidog: {summary_line(shot_status(shot.layout.root))}", file=sys.stderr)


def stale_lock_hint():
    """After `kill -9` (or a power loss) Snakemake's lock stays in .snakemake/locks and every later run
    stops on it. When no Snakemake runs in this folder now, say how to unlock, with this run's own
    command line (Snakemake's own message names only the option)."""
    locks = Path(".snakemake/locks")
    if not workflow.is_main_process or "--unlock" in sys.argv or not locks.is_dir() or not any(locks.iterdir()):
        return
    import psutil

    here = os.getcwd()
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        info = process.info
        if info["pid"] != os.getpid() and info["cwd"] == here and any("snakemake" in part for part in info["cmdline"] or ()):
            return  # a live run holds the lock: nothing stale
    command = " ".join(shlex.quote(part) for part in ["snakemake", *sys.argv[1:]] if part not in ("-n", "--dry-run", "--dryrun"))
    print(f"duplidog: {locks} holds the lock of an earlier run that was killed (no Snakemake runs here now); "
          f"unlock with: {command} --unlock", file=sys.stderr)


stale_lock_hint()
