"""Classify video: files, cameras, network streams and GStreamer pipelines, decoded with OpenCV (torch-free).

A reader thread decodes frames and brings each to the model's input with the same preprocessing as still images
(`Preprocessing.fit`, after converting OpenCV's BGR to the model's channel order); the caller's thread classifies
them in batches. Between the two sits a bounded `FrameQueue`: a file's reader waits when it is full (every frame is
classified), a live source's reader drops the oldest frame instead (latency stays bounded; the drops are counted).
Memory is bounded by the queue whatever the length of the video: the queue holds at most `queue_frames` frames and
`queue_bytes` bytes, and latency percentiles come from a fixed-size histogram.

OpenCV (`cv2`) is the `video` extra (`opencv-python-headless`) or, on a Jetson, JetPack's own build (with GStreamer);
it is imported only when a source is opened.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Deque, List, Optional, Protocol, Sequence, TextIO

import numpy as np

from edgecls.errors import EdgeclsError, first_line

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv",
                  ".h264", ".h265", ".264", ".265", ".mjpeg", ".y4m"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_CAMERA_DEVICE = re.compile(r"/dev/video\d+")

# The queue between the reader and the classifier, when the caller gives no size: a file's reader runs this many
# batches ahead; a live source keeps one batch (a deeper queue only adds latency).
FILE_QUEUE_BATCHES = 2
LIVE_QUEUE_BATCHES = 1
QUEUE_BYTES = 256 * 2**20  # whatever the frame size: a 4K frame kept for the annotated video is 24 MB
WRITER_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
LIVE_FPS_FALLBACK = 30.0  # frame rate of the annotated video when a live source does not say its own


# ----------------------------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class SourceSpec:
    """What `edgecls predict SOURCE` was given, when it names a video source rather than image files."""

    text: str
    kind: str  # "file" | "camera" | "stream" | "pipeline"

    @property
    def live(self) -> bool:
        """Frames arrive in real time whether or not we keep up (drop-oldest), unlike a file's."""
        return self.kind != "file"


def parse_source(text: str) -> Optional[SourceSpec]:
    """The video source `text` names, or None when it names image files or folders (predict's still-image path).

    A GStreamer pipeline has a `!`; a stream a URL scheme; a camera is `/dev/videoN` or an index (a number that is
    not an existing file); a video file has a video suffix."""
    path = Path(text)
    if "!" in text and not path.exists():
        return SourceSpec(text, "pipeline")
    if text.lower().startswith(STREAM_SCHEMES):
        return SourceSpec(text, "stream")
    if (text.isdigit() and not path.exists()) or _CAMERA_DEVICE.fullmatch(text):
        return SourceSpec(text, "camera")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return SourceSpec(text, "file")
    return None


def _cv2() -> Any:
    # FFmpeg's and OpenCV's own log lines would come before our one-line errors; a user who wants them sets these.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import cv2  # the `video` extra; the CLI turns its absence into one line naming the extra

    return cv2


def opencv_facts() -> dict[str, Any]:
    """Which OpenCV is installed, where from and whether it has GStreamer (for `edgecls doctor`); None when absent."""
    try:
        cv2 = _cv2()
    except ImportError:
        return {"version": None, "gstreamer": False, "path": None}
    return {"version": str(cv2.__version__), "gstreamer": has_gstreamer(cv2), "path": str(Path(cv2.__file__).parent)}


def has_gstreamer(cv2: Any) -> bool:
    """Whether this OpenCV build reads GStreamer pipelines (JetPack's does; the package index's wheels do not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1].upper()
    return False


class FrameSource(Protocol):
    """Where frames come from: OpenCV here; tests give their own."""

    live: bool
    fps: float  # frames per second the source declares; 0 when it does not say

    def read(self) -> Optional[np.ndarray]: ...  # the next frame (uint8 H x W x 3 BGR), None at the end

    def skip(self) -> bool: ...  # pass over the next frame without converting it; False at the end

    def position_ms(self) -> float: ...  # the timestamp of the frame just read, as the source says it

    def close(self) -> None: ...


class OpenCVSource:
    """A cv2.VideoCapture on a file, a camera, a stream URL or a GStreamer pipeline."""

    def __init__(self, spec: SourceSpec) -> None:
        cv2 = _cv2()
        self.spec, self.live = spec, spec.live
        if spec.kind == "pipeline":
            if not has_gstreamer(cv2):
                raise EdgeclsError(f"the OpenCV here ({cv2.__version__}, {Path(cv2.__file__).parent}) is built without "
                                   "GStreamer, so it cannot run the pipeline given; on a Jetson use JetPack's OpenCV "
                                   "(sudo apt install python3-opencv, and `pip uninstall opencv-python-headless`)")
            capture = cv2.VideoCapture(spec.text, cv2.CAP_GSTREAMER)
        elif spec.kind == "camera" and spec.text.isdigit():
            capture = cv2.VideoCapture(int(spec.text))
        else:
            capture = cv2.VideoCapture(spec.text)
        if not capture.isOpened():
            capture.release()
            raise EdgeclsError(f"cannot open video source {spec.text}: {_OPEN_HINTS[spec.kind]}")
        self.capture = capture
        self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(self.fps) or self.fps < 0 or self.fps > 1000:
            self.fps = 0.0  # some cameras and streams report garbage
        self._pos_msec = cv2.CAP_PROP_POS_MSEC

    def read(self) -> Optional[np.ndarray]:
        ok, frame = self.capture.read()
        return frame if ok and frame is not None and frame.size else None

    def skip(self) -> bool:
        return bool(self.capture.grab())

    def position_ms(self) -> float:
        return float(self.capture.get(self._pos_msec))

    def close(self) -> None:
        self.capture.release()


_OPEN_HINTS = {
    "file": "OpenCV cannot decode it (damaged, empty, or a codec its FFmpeg lacks); check or re-encode the file",
    "camera": "no such camera, or it is busy or not readable by this user (`v4l2-ctl --list-devices` lists cameras; "
              "a Jetson CSI camera is read through a pipeline: 'nvarguscamerasrc ! ... ! appsink')",
    "stream": "the stream does not answer or OpenCV's FFmpeg cannot read it; check the URL and the network",
    "pipeline": "GStreamer could not start it; check it with gst-launch-1.0 and end it with '! videoconvert ! "
                "video/x-raw,format=BGR ! appsink'",
}


def open_source(spec: SourceSpec) -> OpenCVSource:
    if spec.kind == "file":
        path = Path(spec.text)
        if not path.is_file():
            raise EdgeclsError(f"video file {path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                               "check the path")
    return OpenCVSource(spec)


# ----------------------------------------------------------------------------------------------- queue, latency

@dataclass
class Frame:
    index: int  # position in the source, from 0 (frames skipped by --every count too)
    timestamp_ms: float  # the source's timestamp (files), or ms since the run started (live sources)
    captured_at: float  # time.perf_counter() when the frame was read: end-to-end latency starts here
    fitted: np.ndarray  # input_size x input_size x 3, the model's channel order: what the classifier gets
    original: Optional[np.ndarray] = None  # the frame as decoded (BGR), kept only for the annotated video

    @property
    def nbytes(self) -> int:
        return self.fitted.nbytes + (self.original.nbytes if self.original is not None else 0)


class FrameQueue:
    """Frames between the reader and the classifier, bounded in count and bytes.

    `drop_oldest` (live sources): a full queue drops its oldest frame for the new one, so the classifier always
    works on recent frames; otherwise (files) the reader waits for room. The first frame is always admitted, so a
    frame larger than `max_bytes` still passes, alone."""

    def __init__(self, max_frames: int, max_bytes: int = QUEUE_BYTES, drop_oldest: bool = False) -> None:
        if max_frames < 1:
            raise EdgeclsError(f"the frame queue must hold at least 1 frame, got {max_frames}")
        self.max_frames, self.max_bytes, self.drop_oldest = max_frames, max_bytes, drop_oldest
        self._items: Deque[Frame] = collections.deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0
        self.peak_frames = 0
        self.peak_bytes = 0

    def _full(self, incoming: int) -> bool:
        return bool(self._items) and (len(self._items) >= self.max_frames or self._bytes + incoming > self.max_bytes)

    def put(self, frame: Frame) -> bool:
        """Queue a frame; False when the queue was closed (the consumer stopped)."""
        size = frame.nbytes
        with self._cond:
            while not self._closed and self._full(size):
                if self.drop_oldest:
                    self._bytes -= self._items.popleft().nbytes
                    self.dropped += 1
                else:
                    self._cond.wait()
            if self._closed:
                return False
            self._items.append(frame)
            self._bytes += size
            self.peak_frames = max(self.peak_frames, len(self._items))
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self._cond.notify_all()
            return True

    def take(self, count: int, fill: bool) -> List[Frame]:
        """Up to `count` frames, oldest first; waits for at least one. `fill`: wait until `count` are there (or the
        queue is closed or full) rather than taking what is there now. Empty only once closed and drained."""
        with self._cond:
            while not self._items or (fill and len(self._items) < count and not self._closed
                                      and not self._full(0)):
                if self._closed and not self._items:
                    return []
                self._cond.wait()
            taken = [self._items.popleft() for _ in range(min(count, len(self._items)))]
            self._bytes -= sum(frame.nbytes for frame in taken)
            self._cond.notify_all()
            return taken

    def close(self) -> None:
        """No more frames will be put (the reader ended) or taken (the consumer stopped): wake both sides."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> None:
        """Drop what is still queued (the run was stopped)."""
        with self._cond:
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()


class LatencyHistogram:
    """Latencies in log-spaced bins 1% wide (10 µs to 1000 s): percentiles to 1% in fixed memory, however many frames."""

    LOW_S, HIGH_S, STEP = 1e-5, 1e3, 1.01

    def __init__(self) -> None:
        self._bins = math.ceil(math.log(self.HIGH_S / self.LOW_S) / math.log(self.STEP)) + 1
        self.counts = np.zeros(self._bins, dtype=np.int64)
        self.count = 0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        clipped = min(max(seconds, self.LOW_S), self.HIGH_S)
        self.counts[int(math.log(clipped / self.LOW_S) / math.log(self.STEP))] += 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def percentile(self, q: float) -> Optional[float]:
        """The q-th percentile in seconds (the geometric middle of its bin), None before any sample."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        return min(self.LOW_S * self.STEP ** (index + 0.5), self.max_s)


# ----------------------------------------------------------------------------------------------- the run

@dataclass
class FrameResult:
    index: int
    timestamp_ms: float
    top_k: list  # [(class name, probability), ...], most probable first
    latency_ms: float

    def json_line(self) -> str:
        return json.dumps({"frame": self.index, "timestamp_ms": round(self.timestamp_ms, 3),
                           "top_k": [{"name": name, "probability": probability} for name, probability in self.top_k],
                           "latency_ms": round(self.latency_ms, 3)})


@dataclass
class VideoSummary:
    source: str
    live: bool
    frames_read: int = 0  # taken from the source, skipped ones (--every) included
    frames_classified: int = 0
    frames_dropped: int = 0  # live sources: dropped by the queue because inference fell behind
    frames_skipped: int = 0  # not classified because of --every
    frames_discarded: int = 0  # read but not classified when the run was stopped (queued, or in the batch running)
    decode_seconds: float = 0.0  # time the reader spent in the source's read / grab
    inference_seconds: float = 0.0  # time spent classifying (preprocessing of the batch included)
    wall_seconds: float = 0.0
    latency_p50_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    latency_max_ms: Optional[float] = None
    queue_capacity: int = 0
    queue_peak: int = 0
    batch_size: int = 0
    ended: str = "end of the video"  # why the run stopped
    failed: bool = False  # a live source that stopped, or a read that raised: the CLI exits 1
    interrupted: bool = False  # Ctrl-C: the CLI exits 130
    output: Optional[str] = None  # the annotated video, when written

    @property
    def decode_fps(self) -> float:
        decoded = self.frames_read
        return decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def inference_fps(self) -> float:
        return self.frames_classified / self.inference_seconds if self.inference_seconds > 0 else 0.0

    @property
    def throughput_fps(self) -> float:
        """Frames classified per second of the whole run: what a user of the video path gets."""
        return self.frames_classified / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(decode_fps=self.decode_fps, inference_fps=self.inference_fps,
                      throughput_fps=self.throughput_fps)
        return record

    def lines(self) -> List[str]:
        def ms(value: Optional[float]) -> str:
            return "-" if value is None else f"{value:.1f} ms"

        dropped = f", {self.frames_dropped:,} dropped (inference fell behind)" if self.live else ""
        skipped = f", {self.frames_skipped:,} skipped (--every)" if self.frames_skipped else ""
        discarded = f", {self.frames_discarded:,} in flight when stopped" if self.frames_discarded else ""
        return [f"{self.source}: {self.ended}",
                f"frames: {self.frames_read:,} read, {self.frames_classified:,} classified{dropped}{skipped}{discarded}",
                f"decode {self.decode_fps:,.1f} fps, inference {self.inference_fps:,.1f} fps, overall "
                f"{self.throughput_fps:,.1f} fps in {self.wall_seconds:.2f} s (batches of up to {self.batch_size}, "
                f"queue {self.queue_peak}/{self.queue_capacity} at most)",
                f"end-to-end latency p50 {ms(self.latency_p50_ms)}, p99 {ms(self.latency_p99_ms)}, "
                f"max {ms(self.latency_max_ms)}"]


class Classifying(Protocol):
    """What the run needs of a classifier: `edgecls.runtime.Classifier` is one."""

    preprocess: Any
    batch_size: int

    def classify(self, images: Any) -> Any: ...


def to_model_order(frame: np.ndarray, channel_order: str) -> np.ndarray:
    """An OpenCV frame (BGR, or gray) in the channel order the model's metadata names."""
    if frame.ndim == 3 and frame.shape[2] >= 3 and channel_order.upper() == "RGB":
        return frame[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    return frame


class _Reader(threading.Thread):
    """Reads the source into the queue until it ends, `max_frames` are read, or `stop` is set."""

    def __init__(self, source: FrameSource, queue: FrameQueue, preprocess: Any, every: int,
                 max_frames: Optional[int], keep_original: bool, started: float) -> None:
        super().__init__(name="edgecls-video-reader", daemon=True)
        self.source, self.queue, self.preprocess = source, queue, preprocess
        self.every, self.max_frames, self.keep_original, self.started = every, max_frames, keep_original, started
        self.stop = threading.Event()
        self.read_count = 0
        self.skipped = 0
        self.decode_seconds = 0.0
        self.ended_at_source = False  # the source had no more frames (end of a file; a live source that stopped)
        self.failure: Optional[str] = None

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - a decoder or camera failing mid-run: reported, never a traceback
            self.failure = f"reading frame {self.read_count} failed ({first_line(exc)})"
        finally:
            self.queue.close()

    def _loop(self) -> None:
        fps = self.source.fps
        order = self.preprocess.channel_order
        while not self.stop.is_set() and (self.max_frames is None or self.read_count < self.max_frames):
            index = self.read_count
            began = time.perf_counter()
            if index % self.every:
                more = self.source.skip()
                self.decode_seconds += time.perf_counter() - began
                if not more:
                    self.ended_at_source = True
                    return
                self.read_count += 1
                self.skipped += 1
                continue
            frame = self.source.read()
            captured = time.perf_counter()
            self.decode_seconds += captured - began
            if frame is None:
                self.ended_at_source = True
                return
            self.read_count += 1
            if self.source.live:
                stamp = (captured - self.started) * 1000
            else:
                stamp = index * 1000 / fps if fps > 0 else self.source.position_ms()
            fitted = self.preprocess.fit(np.ascontiguousarray(to_model_order(frame, order)))
            item = Frame(index, stamp, captured, fitted, frame if self.keep_original else None)
            if not self.queue.put(item):
                return


@dataclass(frozen=True)
class VideoOptions:
    """How a video is classified (`edgecls predict SOURCE`'s options), checked once when made. `batch_size` None: the
    engine's; `queue_frames` None: 2 batches for a file, 1 for a live source."""

    top_k: int = 3
    every: int = 1
    max_frames: Optional[int] = None
    batch_size: Optional[int] = None
    queue_frames: Optional[int] = None
    queue_bytes: int = QUEUE_BYTES

    def __post_init__(self) -> None:
        for label, value in (("--top-k", self.top_k), ("--every", self.every), ("--max-frames", self.max_frames),
                             ("--batch-size", self.batch_size), ("--queue", self.queue_frames),
                             ("the queue's byte limit", self.queue_bytes)):
            if value is not None and value < 1:
                raise EdgeclsError(f"{label} must be 1 or more, got {value}")


def run_video(source: FrameSource, classifier: Classifying, options: VideoOptions = VideoOptions(), *,
              on_result: Optional[Callable[[FrameResult], None]] = None, writer: Optional["AnnotatedVideo"] = None,
              name: str = "video") -> VideoSummary:
    """Classify the frames of `source` in batches; `on_result` gets each frame's result in order.

    A file fills each batch (throughput); a live source takes what has arrived, up to the batch size, so a frame
    never waits for later ones. Returns the summary when the source ends, `options.max_frames` are read, the source
    fails, or on Ctrl-C (KeyboardInterrupt in this thread): then `ended` says so. The source is not closed here."""
    batch = min(options.batch_size or classifier.batch_size, classifier.batch_size)
    if batch < 1:
        raise EdgeclsError(f"batch size must be 1 or more, got {classifier.batch_size} (the engine's)")
    capacity = options.queue_frames or batch * (LIVE_QUEUE_BATCHES if source.live else FILE_QUEUE_BATCHES)
    queue = FrameQueue(capacity, options.queue_bytes, drop_oldest=source.live)
    latency = LatencyHistogram()
    summary = VideoSummary(name, source.live, queue_capacity=capacity, batch_size=batch)
    started = time.perf_counter()
    reader = _Reader(source, queue, classifier.preprocess, options.every, options.max_frames, writer is not None,
                     started)
    reader.start()
    try:
        while True:
            frames = queue.take(batch, fill=not source.live)
            if not frames:
                break
            began = time.perf_counter()
            predictions = classifier.classify(np.stack([frame.fitted for frame in frames]))
            done = time.perf_counter()
            summary.inference_seconds += done - began
            for frame, ranked in zip(frames, predictions.top_k(options.top_k)):
                latency.add(done - frame.captured_at)
                result = FrameResult(frame.index, frame.timestamp_ms, ranked, (done - frame.captured_at) * 1000)
                summary.frames_classified += 1
                if writer is not None and frame.original is not None:
                    writer.write(frame.original, ranked)
                if on_result is not None:
                    on_result(result)
        summary.ended = _why_ended(reader, source, options.max_frames)
        summary.failed = reader.failure is not None or (source.live and reader.ended_at_source)
    except KeyboardInterrupt:
        summary.ended, summary.interrupted = "interrupted (Ctrl-C)", True
    except BrokenPipeError:  # whoever read the results went away (`edgecls predict cam.mp4 | head`): stop quietly
        summary.ended = "the output was closed"
    finally:
        reader.stop.set()
        queue.close()
        queue.discard()
        reader.join(timeout=5)  # a live read blocks at most a frame interval; a hung stream is left to the daemon
        summary.wall_seconds = time.perf_counter() - started
        summary.frames_read, summary.frames_skipped = reader.read_count, reader.skipped
        summary.decode_seconds = reader.decode_seconds
        summary.frames_dropped = queue.dropped
        summary.frames_discarded = max(0, summary.frames_read - summary.frames_skipped - summary.frames_dropped
                                       - summary.frames_classified)
        summary.queue_peak = queue.peak_frames
        for attribute, q in (("latency_p50_ms", 50), ("latency_p99_ms", 99)):
            value = latency.percentile(q)
            setattr(summary, attribute, None if value is None else value * 1000)
        summary.latency_max_ms = latency.max_s * 1000 if latency.count else None
    return summary


def _why_ended(reader: _Reader, source: FrameSource, max_frames: Optional[int]) -> str:
    if reader.failure is not None:
        return reader.failure
    if reader.ended_at_source and source.live:
        return (f"the source stopped delivering frames after {reader.read_count:,} (camera disconnected or stream "
                "ended)")
    if reader.ended_at_source:
        return "end of the video" if reader.read_count else "the video holds no frame OpenCV can decode"
    if max_frames is not None and reader.read_count >= max_frames:
        return f"--max-frames {max_frames:,} reached"
    return "stopped"


# ----------------------------------------------------------------------------------------------- annotated video

class AnnotatedVideo:
    """`-o out.mp4`: each classified frame with its top-1 class drawn on it. Written in a staging folder beside the
    destination and renamed into place by `finish`, so a failed run leaves no half-written file (the codec follows
    the suffix: mp4v for .mp4/.mov, MJPG for .avi, FFV1 for .mkv)."""

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in WRITER_CODECS:
            raise EdgeclsError(f"cannot write {self.path}: give an annotated video ending in "
                               f"{', '.join(sorted(WRITER_CODECS))}")
        self.codec, self.fps = WRITER_CODECS[suffix], fps if fps > 0 else LIVE_FPS_FALLBACK
        self.frames = 0
        self._writer: Any = None
        self._stack = contextlib.ExitStack()
        self._staged: Optional[Path] = None

    def check(self, inputs: Sequence[str | os.PathLike] = ()) -> None:
        """Before any work: the path is none of the command's `inputs` (the source video, the model), the folder takes
        files, and this OpenCV has an encoder for the codec."""
        from edgecls.artifacts import check_output_file, staging_dir

        check_output_file(self.path, inputs=inputs)
        cv2 = _cv2()
        with staging_dir(self.path.parent.absolute(), "video-check") as folder:
            probe = cv2.VideoWriter(str(folder / f"probe{self.path.suffix}"), cv2.VideoWriter_fourcc(*self.codec),
                                    self.fps, (64, 64))
            opened = probe.isOpened()
            probe.release()
        if not opened:
            raise EdgeclsError(f"this OpenCV ({cv2.__version__}) has no {self.codec} encoder for {self.path}; "
                               f"choose another suffix ({', '.join(sorted(WRITER_CODECS))})")

    def write(self, frame: np.ndarray, ranked: Sequence[tuple]) -> None:
        cv2 = _cv2()
        if self._writer is None:
            from edgecls.artifacts import staging_dir

            folder = self._stack.enter_context(staging_dir(self.path.parent.absolute(), "video"))
            self._staged = folder / self.path.name
            height, width = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self._staged), cv2.VideoWriter_fourcc(*self.codec), self.fps,
                                           (width, height))
            if not self._writer.isOpened():
                raise EdgeclsError(f"cannot write {self.path} ({self.codec}, {width}x{height})")
        image = np.ascontiguousarray(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        name, probability = ranked[0]
        text = f"{name} {probability:.2f}"
        scale = max(0.3, image.shape[0] / 480)
        thickness = max(1, round(scale * 2))
        origin = (max(2, image.shape[1] // 80), max(12, round(24 * scale)))
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        self._writer.write(image)
        self.frames += 1

    def finish(self, install: bool) -> Optional[Path]:
        """Close the file; with `install`, rename it into place (returns its path). Always removes the staging."""
        try:
            if self._writer is not None:
                self._writer.release()
                if install and self._staged is not None and self.frames:
                    os.replace(self._staged, self.path)
                    return self.path
            return None
        finally:
            self._stack.close()


# ----------------------------------------------------------------------------------------------- `edgecls predict`

def predict_video(spec: SourceSpec, engine: str, options: VideoOptions = VideoOptions(), *, provider: str = "cpu",
                  output: Optional[str] = None, out: Optional[TextIO] = None,
                  err: Optional[TextIO] = None) -> VideoSummary:
    """`edgecls predict SOURCE`: JSON lines on `out` (one per classified frame, flushed per batch), the summary on
    `err`. The options (checked when made) and the output path are checked before the source is opened or the model
    loaded."""
    import sys

    from edgecls.runtime import Classifier

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    writer = AnnotatedVideo(output, 0.0) if output else None
    if writer is not None:
        writer.check(inputs=(spec.text, engine))
    source = open_source(spec)
    try:
        if writer is not None:
            writer.fps = (source.fps or LIVE_FPS_FALLBACK) / options.every
        with Classifier.load(engine, provider=provider, batch_size=options.batch_size) as classifier:
            summary = run_video(source, classifier, options, name=spec.text, writer=writer,
                                on_result=lambda result: out.write(result.json_line() + "\n"))
            try:
                out.flush()
            except BrokenPipeError:
                summary.ended = "the output was closed"
            if summary.ended == "the output was closed" and out is sys.stdout:
                # Python's own flush of stdout at exit would fail again, with a traceback: point it at /dev/null.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except BaseException:
        if writer is not None:
            writer.finish(install=False)
        raise
    finally:
        source.close()
    if writer is not None:
        installed = writer.finish(install=True)
        summary.output = str(installed) if installed else None
    lines = summary.lines()
    if summary.output:
        lines.append(f"annotated video: {summary.output} ({writer.frames:,} frames)")
    for line in lines:
        err.write(line + "\n")
    err.flush()
    return summary


__all__ = ["AnnotatedVideo", "Frame", "FrameQueue", "FrameResult", "LatencyHistogram", "OpenCVSource", "SourceSpec",
           "VideoOptions", "VideoSummary", "open_source", "opencv_facts", "parse_source", "predict_video", "run_video"]
