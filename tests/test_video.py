"""edgecls predict on video: a lossless video answers frame by frame what predict answers on its images; a live
source faster than inference drops its oldest frames (counted) with the queue and the latency bounded; a source that
breaks ends with one line and the summary so far."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecls.cli import main
from edgecls.errors import EdgeclsError
from edgecls.runtime import load
from edgecls.video import (Frame, FrameQueue, LatencyHistogram, SourceSpec, VideoOptions, VideoSummary,
                           parse_source, run_video)

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the `video` extra) is not installed")

FPS = 25.0


@pytest.fixture(scope="module")
def fp32_onnx(new2_export) -> Path:
    return new2_export.files["fp32"]


def write_video(path: Path, frames_rgb: np.ndarray, codec: str = "FFV1") -> Path:
    """RGB frames as a video (FFV1 is lossless: frames read back byte for byte)."""
    height, width = frames_rgb.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), FPS, (width, height))
    assert writer.isOpened()
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV writes BGR
    writer.release()
    return path


@pytest.fixture(scope="module")
def clips(tiny_cifar, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The same 37 test images as PNG files and as an FFV1 video, at 32 x 32 and enlarged to 64 x 48 (resized by
    predict's preprocessing, so the resize path is compared too)."""
    root = tmp_path_factory.mktemp("clips")
    images = tiny_cifar.test_images[:37]
    made = {}
    for label, size in (("native", None), ("enlarged", (64, 48))):
        folder = root / label
        folder.mkdir()
        frames = []
        for index, image in enumerate(images):
            picture = Image.fromarray(image)
            if size is not None:
                picture = picture.resize(size, Image.BILINEAR)
            picture.save(folder / f"{index:03d}.png")
            frames.append(np.asarray(picture))
        made[label] = (folder, write_video(root / f"{label}.mkv", np.stack(frames)))
    return made


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["predict", *args])
    return result.exit_code, result.stdout, result.stderr


def image_answers(stdout: str) -> list[list[tuple[str, str]]]:
    """predict's image lines, in file order: [(name, probability as printed), ...] per image."""
    answers = []
    for line in stdout.strip().splitlines():
        fields = line.split(": ", 1)[1].split()
        answers.append([(fields[i], fields[i + 1]) for i in range(0, len(fields), 2)])
    return answers


def frame_records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.strip().splitlines()]


@pytest.mark.parametrize("label", ["native", "enlarged"])
def test_a_lossless_video_answers_what_its_images_answer(fp32_onnx, clips, label):
    folder, video = clips[label]
    code, stdout, stderr = run(str(folder), "--engine", str(fp32_onnx), "--top-k", "3")
    assert code == 0, stderr
    expected = image_answers(stdout)
    code, stdout, stderr = run(str(video), "--engine", str(fp32_onnx), "--top-k", "3", "--batch-size", "8")
    assert code == 0, stderr
    records = frame_records(stdout)
    assert [record["frame"] for record in records] == list(range(37))
    assert [record["timestamp_ms"] for record in records] == pytest.approx([i * 1000 / FPS for i in range(37)])
    got = [[(entry["name"], f"{entry['probability']:.3f}") for entry in record["top_k"]] for record in records]
    assert got == expected
    # The summary: every frame read and classified, none dropped (a file's reader waits for inference).
    assert "end of the video" in stderr and "37 read, 37 classified" in stderr and "latency p50" in stderr


def test_every_and_max_frames(fp32_onnx, clips):
    _, video = clips["native"]
    code, stdout, stderr = run(str(video), "--engine", str(fp32_onnx), "--every", "4", "--max-frames", "30")
    assert code == 0, stderr
    assert [record["frame"] for record in frame_records(stdout)] == list(range(0, 30, 4))
    assert "30 read, 8 classified" in stderr and "22 skipped (--every)" in stderr
    assert "--max-frames 30 reached" in stderr


def test_annotated_video(fp32_onnx, clips, tmp_path):
    _, video = clips["enlarged"]
    out = tmp_path / "labels.avi"
    code, _, stderr = run(str(video), "--engine", str(fp32_onnx), "--every", "2", "-o", str(out))
    assert code == 0, stderr
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 19 and frames[0].shape == (48, 64, 3)
    assert f"annotated video: {out} (19 frames)" in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.avi"]  # no staging folder left


def test_bad_video_input_is_one_line_before_work(fp32_onnx, clips, tmp_path):
    _, video = clips["native"]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    # In a real process: FFmpeg's own complaints (written by C code straight to the terminal) are silenced too.
    done = subprocess.run([sys.executable, "-m", "edgecls", "predict", str(broken), "--engine", str(fp32_onnx)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"error: cannot open video source {broken}: OpenCV cannot decode it "
                                                "(damaged, empty, or a codec its FFmpeg lacks); check or re-encode "
                                                "the file"]

    code, stdout, stderr = run(str(tmp_path / "missing.mkv"), "--engine", str(fp32_onnx))
    assert (code, stdout) == (2, "") and "does not exist" in stderr

    # An output path that cannot be written is refused before the video is read.
    (tmp_path / "taken.mp4").mkdir()
    code, stdout, stderr = run(str(video), "--engine", str(fp32_onnx), "-o", str(tmp_path / "taken.mp4"))
    assert (code, stdout) == (2, "") and "is a folder" in stderr
    code, stdout, stderr = run(str(video), "--engine", str(fp32_onnx), "-o", str(tmp_path / "labels.gif"))
    assert (code, stdout) == (2, "") and "give an annotated video ending in" in stderr
    before = video.read_bytes()  # the source video itself as the output: refused, the video untouched
    code, stdout, stderr = run(str(video), "--engine", str(fp32_onnx), "-o", str(video))
    assert (code, stdout) == (2, "") and "an input of this command" in stderr and video.read_bytes() == before

    code, stdout, stderr = run(str(video), "--engine", str(fp32_onnx), "--every", "0")
    assert (code, stdout) == (2, "") and "--every must be 1 or more" in stderr
    code, stdout, stderr = run(str(video), str(video), "--engine", str(fp32_onnx))
    assert code == 2 and "one video source at a time" in stderr
    for label, field, value in (("--top-k", "top_k", 0), ("--max-frames", "max_frames", 0),
                                ("--batch-size", "batch_size", -1), ("--queue", "queue_frames", 0)):
        with pytest.raises(EdgeclsError, match=f"^{label} must be 1 or more, got {value}$"):
            VideoOptions(**{field: value})
    # Video options with still images: said, not ignored.
    code, _, stderr = run(str(clips["native"][0]), "--engine", str(fp32_onnx), "--every", "2")
    assert code == 2 and "video options (--every) need a video source" in stderr


def test_sources_are_told_apart(tmp_path):
    assert parse_source("clip.MP4") == SourceSpec("clip.MP4", "file")
    assert parse_source("/dev/video0").kind == "camera" and parse_source("1").kind == "camera"
    assert parse_source("rtsp://10.0.0.2:8554/cam").kind == "stream"
    assert parse_source("https://example.com/live.m3u8").kind == "stream"
    assert parse_source("nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink").kind \
        == "pipeline"
    assert parse_source("photos/") is None and parse_source("cat.jpg") is None
    (tmp_path / "7").write_bytes(b"")  # a file named like a camera index is a file
    assert parse_source(str(tmp_path / "7")) is None
    assert all(spec.live for spec in map(parse_source, ["0", "rtsp://a/b", "v4l2src ! appsink"]))
    assert not parse_source("a.mkv").live


# ----------------------------------------------------------------------------------------------- live sources

class FakeCamera:
    """A live source producing a new 32 x 32 frame every `interval_s` (a camera faster than inference), that stops
    delivering (returns None, as a disconnected camera does) after `frames`, or raises after `fail_after`."""

    live = True
    fps = 0.0

    def __init__(self, images: np.ndarray, frames: int, interval_s: float = 0.0005,
                 fail_after: Optional[int] = None) -> None:
        self.images, self.frames, self.interval_s, self.fail_after = images, frames, interval_s, fail_after
        self.served = 0
        self.closed = False

    def read(self) -> Optional[np.ndarray]:
        if self.fail_after is not None and self.served >= self.fail_after:
            raise RuntimeError("VIDIOC_DQBUF: No such device")
        if self.served >= self.frames:
            return None
        time.sleep(self.interval_s)
        frame = self.images[self.served % len(self.images)][:, :, ::-1]
        self.served += 1
        return frame

    def skip(self) -> bool:
        return self.read() is not None

    def position_ms(self) -> float:
        return 0.0

    def close(self) -> None:
        self.closed = True


class SlowClassifier:
    """The real classifier, made slower than the camera: each batch takes at least `batch_s`."""

    def __init__(self, classifier, batch_s: float) -> None:
        self.inner, self.batch_s = classifier, batch_s
        self.preprocess, self.batch_size = classifier.preprocess, classifier.batch_size
        self.batches: list[int] = []

    def classify(self, images):
        began = time.perf_counter()
        result = self.inner.classify(images)
        self.batches.append(len(images))
        time.sleep(max(0.0, self.batch_s - (time.perf_counter() - began)))
        return result


def test_a_live_source_faster_than_inference_drops_the_oldest_frames(fp32_onnx, tiny_cifar):
    camera = FakeCamera(tiny_cifar.test_images, frames=1500)  # about 2,000 frames/s
    results = []
    with load(fp32_onnx) as classifier:
        slow = SlowClassifier(classifier, batch_s=0.06)  # at most 4 frames per 60 ms: about 67 frames/s
        summary = run_video(camera, slow, VideoOptions(batch_size=4, queue_frames=8), on_result=results.append)
    assert summary.frames_read == 1500
    assert summary.frames_dropped > 500  # inference kept up with a fraction of the frames
    assert summary.frames_read == summary.frames_classified + summary.frames_dropped
    assert summary.queue_capacity == 8 and summary.queue_peak <= 8
    assert max(slow.batches) <= 4
    # Latency stays bounded by the queue (2 batches waiting + the one running, ~180 ms): without dropping, the last
    # frames would have waited for all the earlier ones, about 20 s.
    assert summary.latency_p99_ms < 600 and summary.latency_max_ms < 1000
    assert [result.index for result in results] == sorted(result.index for result in results)
    assert summary.failed and "stopped delivering frames after 1,500" in summary.ended  # a camera that went away


def test_a_camera_that_fails_ends_with_the_summary_so_far(fp32_onnx, tiny_cifar):
    camera = FakeCamera(tiny_cifar.test_images, frames=10_000, interval_s=0.001, fail_after=40)
    with load(fp32_onnx) as classifier:
        summary = run_video(camera, classifier, VideoOptions(batch_size=4))
    assert summary.failed and summary.ended == "reading frame 40 failed (VIDIOC_DQBUF: No such device)"
    assert summary.frames_read == 40 and summary.frames_classified + summary.frames_dropped == 40
    assert len(summary.lines()) == 4 and summary.lines()[0].endswith("No such device)")


def test_ctrl_c_stops_with_the_summary_so_far(fp32_onnx, tiny_cifar):
    class Interrupting(SlowClassifier):
        def classify(self, images):
            if len(self.batches) == 3:
                raise KeyboardInterrupt
            return super().classify(images)

    camera = FakeCamera(tiny_cifar.test_images, frames=100_000)
    with load(fp32_onnx) as classifier:
        summary = run_video(camera, Interrupting(classifier, 0.0), VideoOptions(batch_size=2))
    assert summary.interrupted and not summary.failed and summary.ended == "interrupted (Ctrl-C)"
    assert summary.frames_classified <= 6 and summary.frames_read < 100_000  # the reader stopped too


# ----------------------------------------------------------------------------------------------- the pieces

def frame(index: int, size: int = 1000) -> Frame:
    return Frame(index, 0.0, 0.0, np.zeros(size, np.uint8))


def test_frame_queue_drop_oldest_and_bounds():
    queue = FrameQueue(3, drop_oldest=True)
    for index in range(10):
        assert queue.put(frame(index))
    assert queue.dropped == 7 and queue.peak_frames == 3
    assert [item.index for item in queue.take(10, fill=False)] == [7, 8, 9]  # the newest kept

    by_bytes = FrameQueue(100, max_bytes=2500, drop_oldest=True)
    for index in range(5):
        by_bytes.put(frame(index))
    assert by_bytes.peak_bytes <= 2500 and [item.index for item in by_bytes.take(10, fill=False)] == [3, 4]
    huge = FrameQueue(100, max_bytes=10)
    assert huge.put(frame(0)) and [item.index for item in huge.take(1, fill=False)] == [0]  # alone, it passes

    # A file's queue: the reader waits for room instead of dropping.
    blocking = FrameQueue(2)
    blocking.put(frame(0))
    blocking.put(frame(1))
    writer = threading.Thread(target=blocking.put, args=(frame(2),))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive() and blocking.dropped == 0
    assert [item.index for item in blocking.take(1, fill=False)] == [0]
    writer.join(2)
    assert not writer.is_alive()
    blocking.close()
    assert [item.index for item in blocking.take(5, fill=True)] == [1, 2] and blocking.take(5, fill=True) == []
    assert not blocking.put(frame(3))  # closed: the reader stops


def test_latency_percentiles_in_fixed_memory():
    histogram = LatencyHistogram()
    samples = np.random.default_rng(0).lognormal(mean=-4, sigma=1, size=20_000)
    for value in samples:
        histogram.add(float(value))
    for q in (50, 99):
        assert histogram.percentile(q) == pytest.approx(np.percentile(samples, q), rel=0.015)
    assert histogram.counts.nbytes < 20_000 and LatencyHistogram().percentile(50) is None


def test_summary_lines_name_every_figure():
    summary = VideoSummary("cam", True, frames_read=100, frames_classified=60, frames_dropped=40, decode_seconds=2.0,
                           inference_seconds=1.5, wall_seconds=2.5, latency_p50_ms=12.0, latency_p99_ms=40.0,
                           latency_max_ms=41.0, queue_capacity=8, queue_peak=8, batch_size=4,
                           ended="interrupted (Ctrl-C)")
    text = "\n".join(summary.lines())
    for figure in ("100 read, 60 classified, 40 dropped", "decode 50.0 fps", "inference 40.0 fps",
                   "overall 24.0 fps", "p50 12.0 ms, p99 40.0 ms"):
        assert figure in text
    assert summary.to_dict()["throughput_fps"] == 24.0


def test_gstreamer_pipeline_needs_an_opencv_with_gstreamer():
    from edgecls.video import OpenCVSource, has_gstreamer

    if has_gstreamer(cv2):
        pytest.skip("this OpenCV has GStreamer: the refusal is for builds without it")
    with pytest.raises(EdgeclsError, match="built without GStreamer"):
        OpenCVSource(SourceSpec("videotestsrc ! appsink", "pipeline"))


def test_doctor_names_the_opencv_and_its_gstreamer():
    from edgecls.video import has_gstreamer

    result = CliRunner().invoke(main, ["doctor", "--json", "--no-build"])
    line = next(check for check in json.loads(result.stdout)["checks"] if check["name"] == "OpenCV")["value"]
    assert line.startswith(f"{cv2.__version__}, ") and str(Path(cv2.__file__).parent) in line
    assert ("with GStreamer" if has_gstreamer(cv2) else "without GStreamer") in line
