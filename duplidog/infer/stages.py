"""The background stages of a chunk's run: a reader and a writer thread, and the bounded queues that join
them to the compute stage in the caller's thread.

The queues hold ``read_ahead`` frames each, so memory stays at a few frames however long the chunk. An
error in the writer stops every stage; an error in the reader stops only the reading, so that the frames
read before it are still run and written. ``Pipeline.raise_errors`` raises either in the caller's thread,
with its own message.
"""

from __future__ import annotations

import queue
import threading
from functools import partial
from pathlib import Path

import numpy as np

import duplidog
from duplidog import imageio, temporal
from duplidog.core.plan import Plan
from duplidog.errors import DuplidogError
from duplidog.infer.chunk import Chunk

POLL_SECONDS = 0.05
DONE = object()  # the last item a queue carries


class Stop(Exception):
    """Raised inside a worker when another stage failed and the chunk is being abandoned."""


class Stage(threading.Thread):
    """A background stage that keeps its exception for the main thread to raise, and stops the others."""

    def __init__(self, name: str, work, stop: threading.Event, stops_others: bool = True):
        super().__init__(name=name, daemon=True)
        self._work = work
        self._stop_all = stop
        self._stops_others = stops_others
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except Stop:
            pass
        except BaseException as exc:  # raised again by the main thread
            self.error = exc
            if self._stops_others:
                self._stop_all.set()


def put(q: queue.Queue, item, stop: threading.Event, consumer: Stage | None = None) -> None:
    """Put, but give up when the chunk is being abandoned (raising the consumer's error if it failed)."""
    while True:
        if consumer is not None and consumer.error is not None:
            raise consumer.error
        if stop.is_set():
            raise Stop
        try:
            q.put(item, timeout=POLL_SECONDS)
            return
        except queue.Full:
            continue


def get(q: queue.Queue, stop: threading.Event, producer: Stage | None = None):
    """Get, but give up when the chunk is being abandoned (raising the producer's error if it failed)."""
    while True:
        try:
            return q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            pass
        # Raised outside the except clause: inside it, the producer's error would print chained to a
        # queue.Empty ("During handling of the above exception...") that has nothing to do with it.
        if producer is not None and producer.error is not None:
            raise producer.error
        if stop.is_set():
            raise Stop


def check_like_plate(info: imageio.ImageInfo, plate: Plan) -> None:
    """Refuse a frame that is no longer what ingest found (replaced since): another size, other channels
    (an alpha would silently be dropped), another file format or pixel type. Checks what ``plate`` knows."""
    if plate.width is not None and (info.width, info.height) != (plate.width, plate.height):
        raise DuplidogError(f"{info.path}: {info.width}x{info.height}, but the plate is "
                            f"{plate.width}x{plate.height} (every frame of a shot has one size)")
    if plate.channel_names is not None and list(info.channel_names) != list(plate.channel_names):
        raise DuplidogError(f"{info.path}: channels {','.join(info.channel_names)}, but the plate's were "
                            f"{','.join(plate.channel_names)} at ingest (rerun ingest if the plate changed)")
    for key, what in (("format_name", "file format"), ("pixel_type", "pixel type")):
        if getattr(plate, key) is not None and getattr(info, key) != getattr(plate, key):
            raise DuplidogError(f"{info.path}: {what} {getattr(info, key)}, but the plate's was {getattr(plate, key)} "
                                "at ingest (rerun ingest if the plate changed)")


def read_frame(chunk: Chunk, frame: int) -> tuple[imageio.ImageInfo, np.ndarray, np.ndarray]:
    """One source frame: its header, network channels (checked) and passthrough channels."""
    path = chunk.source.path(frame)
    info = imageio.read_info(path)
    check_like_plate(info, chunk.plate)
    pixels = imageio.read_pixels(path, chunk.route.read)
    network_input = imageio.check_finite(pixels[:, :, :len(chunk.route.input)], path, chunk.nonfinite)
    return info, network_input, pixels[:, :, chunk.route.passthrough_index]


def read_frames(chunk: Chunk, read_queue: queue.Queue, stop: threading.Event) -> None:
    """The reader's work: each frame of the chunk with its temporal window, in order, then DONE."""
    n = chunk.temporal_frames
    decoded = temporal.FrameCache(partial(read_frame, chunk))  # a temporal model's sliding window: each frame read once
    for frame in chunk.frames:
        info, network_input, passthrough = decoded.get(frame)
        # The window's frames (this one first), with their headers and network channels.
        window = {number: decoded.get(number)[:2] for number in temporal.window(frame, n, *chunk.ends)[1:]}
        decoded.forget_before(frame - n)  # no later frame's window reads these
        put(read_queue, (frame, info, network_input, passthrough, window), stop)
    put(read_queue, DONE, stop)


def write_frames(chunk: Chunk, write_queue: queue.Queue, stop: threading.Event, written: list[int]) -> None:
    """The writer's work: each result to its output file (from the source frame's header, with
    provenance attributes), noting the frames written, until DONE."""
    attributes = {"duplidog:model_id": chunk.card.id, "duplidog:version": duplidog.__version__}
    while True:
        item = get(write_queue, stop)
        if item is DONE:
            return
        frame, info, pixels = item
        imageio.write_pixels(chunk.output.path(frame), pixels, like=info, channel_names=chunk.route.written,
                             attributes={**attributes, "duplidog:source": Path(info.path).name})
        written.append(frame)


class Pipeline:
    """One chunk's reader and writer threads, and the queues between them and the compute stage."""

    def __init__(self, chunk: Chunk):
        self.stop = threading.Event()
        self.read_queue: queue.Queue = queue.Queue(maxsize=chunk.read_ahead)
        self.write_queue: queue.Queue = queue.Queue(maxsize=chunk.read_ahead)
        self.written: list[int] = []
        # A frame that cannot be read (truncated, replaced) does not abandon the frames read before it:
        # they are run and written, then its error is raised: the delivery keeps every good frame.
        self.reader = Stage("duplidog-read", partial(read_frames, chunk, self.read_queue, self.stop), self.stop,
                            stops_others=False)
        self.writer = Stage("duplidog-write", partial(write_frames, chunk, self.write_queue, self.stop, self.written),
                            self.stop)

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def next_read(self):
        """The next item the reader put, or DONE when it has finished or failed (its error is raised later)."""
        try:
            return get(self.read_queue, self.stop, self.reader)
        except BaseException as exc:
            if exc is not self.reader.error:
                raise
            return DONE  # every frame before the unreadable one is done: finish writing them

    def write(self, item) -> None:
        put(self.write_queue, item, self.stop, self.writer)

    def finish_writing(self) -> None:
        """Tell the writer no more frames come, and wait until it has written those it has."""
        put(self.write_queue, DONE, self.stop, self.writer)
        while self.writer.is_alive():
            self.writer.join(timeout=POLL_SECONDS)

    def join(self, frames: list[int]) -> None:
        """Wait for both threads; first stop them if the chunk is abandoned (not every one of ``frames`` written)."""
        if self.reader.error or self.writer.error or self.written != frames:
            self.stop.set()  # let the other stages finish their current item and leave
        self.reader.join()
        self.writer.join()

    def raise_errors(self) -> None:
        for stage in (self.reader, self.writer):
            if stage.error is not None:
                raise stage.error
