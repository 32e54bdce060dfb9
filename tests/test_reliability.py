"""Reliability: what a crash, a full disk, hostile files and absurd options can do to the user's files and memory
(no more than the README's "Guarantees" say), each class of failure tested where it is fixed.

Real faults wherever this machine allows them: `edgecls` subprocesses killed with SIGKILL; a full disk made of a
small tmpfs in a private mount namespace (`unshare`; skipped, with the reason, where that is not allowed); folders
made unreadable (as an ordinary user: root reads everything, so a run as root drops to `nobody` for that block).
Memory is measured with tracemalloc against a stated bound, never timed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import io
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from edgecls import reference as references
from edgecls.artifacts import atomic_write, ensure_writable_dir, sha256_file, staging_dir, temporary_prefix
from edgecls.checkpoint import load_checkpoint, save_checkpoint
from edgecls.data import load_cifar10
from edgecls.defaults import BENCH_MAX_BATCH
from edgecls.errors import EdgeclsError
from edgecls.export import ExportRequest, export_model
from edgecls.formats import ExportSet, ModelMetadata
from edgecls.quantize import CalibrationSettings
from edgecls.runtime import Classifier, load
from edgecls.runtime.images import MAX_IMAGE_PIXELS, decode

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


def error_line(output: str) -> str:
    """The output's one line, which must be an error (progress bars aside)."""
    lines = [line for line in output.strip().splitlines() if "%|" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def the_error(stderr: str) -> str:
    """The one error line of a subprocess's stderr (beside its progress and information lines), without traceback."""
    errors = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def subprocess_env(tmp_path: Path, *paths: Path) -> dict[str, str]:
    """The environment of an `edgecls` subprocess: this checkout first on the path, a private data cache."""
    env = {key: value for key, value in os.environ.items() if key != "EDGECLS_DATA"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO)])
    env["EDGECLS_CACHE"] = str(tmp_path / "cache")
    return env


def other_checkpoint(source: Path, target: Path) -> Path:
    """A second checkpoint of the same model: the weights of `source` scaled by 1.01 (another sha256, other logits)."""
    record = torch.load(source, weights_only=True)
    record["state_dict"] = {name: value * 1.01 if value.is_floating_point() else value
                            for name, value in record["state_dict"].items()}
    save_checkpoint(target, {key: value for key, value in record.items() if key not in ("format", "format_version")})
    return target


def traced_peak(work: Callable[[], Any]) -> tuple[Any, int]:
    """`work()` and the peak of the memory Python and numpy allocated while it ran, in bytes."""
    tracemalloc.start()
    try:
        return work(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ===================================================================================== lost or mixed data: kill -9

# Loaded by Python at start-up from PYTHONPATH (as sitecustomize) in the killed subprocesses only (or run by a forked
# child before its command, see FORKING_PARENT): it counts the
# renames into the folders EDGECLS_TEST_WATCH names (fnmatch patterns), logs each, and holds the process still just
# before rename number EDGECLS_TEST_STOP_AT, where the test kills it with SIGKILL. Nothing in edgecls knows of it.
HOLD_BEFORE_RENAME = textwrap.dedent('''
    import fnmatch, os, time

    if os.environ.get("EDGECLS_TEST_WATCH"):
        _patterns = os.environ["EDGECLS_TEST_WATCH"].split(os.pathsep)
        _stop_at = int(os.environ["EDGECLS_TEST_STOP_AT"])
        _log = os.environ["EDGECLS_TEST_LOG"]
        _replace = os.replace
        _count = 0

        def _watched_replace(src, dst, *args, **kwargs):
            global _count
            folder = os.path.dirname(os.path.abspath(dst))
            if any(fnmatch.fnmatch(folder, pattern) for pattern in _patterns):
                _count += 1
                with open(_log, "a") as log:
                    log.write(folder + "\\n")
                if _count == _stop_at:
                    while True:
                        time.sleep(3600)
            return _replace(src, dst, *args, **kwargs)

        os.replace = _watched_replace
''')


# A parent for `edgecls` processes that has already imported what an export imports (torch, onnx, ONNX Runtime: 3 of
# the 5 CPU seconds a tiny export takes): for each request (a JSON line on its stdin) it forks a child that installs
# the hook above and runs the `edgecls` command (the same click entry point as `python -m edgecls`), prints the
# child's pid, then reaps it and prints its exit code. The child is a process of its own, killed with a real SIGKILL.
# (Forking is safe here: torch has run nothing yet, so no OpenMP thread pool exists to be lost in the child.)
FORKING_PARENT = textwrap.dedent('''
    import json, os, sys
    import edgecls.cli, edgecls.export, edgecls.quantize  # noqa: the imports every child would repeat
    import onnxruntime.quantization.shape_inference  # noqa: int8 export's (it pulls in sympy)

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.environ.update(request["env"])
            exec(request["hook"], {})
            sink = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(sink, 1)
            os.dup2(sink, 2)
            code = 0
            try:
                edgecls.cli.main(request["args"], prog_name="edgecls")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
''')


@contextlib.contextmanager
def forking_parent(env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """FORKING_PARENT running with `env`; it ends (and is reaped) with the block."""
    parent = subprocess.Popen([sys.executable, "-c", FORKING_PARENT], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        yield parent
    finally:
        parent.stdin.close()  # its loop ends
        try:
            parent.wait(timeout=60)
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()


def run_held(args: list[str], watch: list[Path | str], stop_at: int, env: dict[str, str], work: Path,
             parent: subprocess.Popen | None = None) -> list[str]:
    """Run `edgecls *args` (`python -m edgecls`, or a child of a forking `parent`, given `env` there); kill it with
    SIGKILL just before its `stop_at`-th rename into a `watch` folder (0: let it finish, successfully). Returns the
    folders of the renames it made or was about to make."""
    log, output = work / "renames.log", work / "output.txt"
    log.unlink(missing_ok=True)
    hold = {"EDGECLS_TEST_WATCH": os.pathsep.join(map(str, watch)), "EDGECLS_TEST_STOP_AT": str(stop_at),
            "EDGECLS_TEST_LOG": str(log)}
    if parent is None:
        with open(output, "w") as sink:
            process = subprocess.Popen([sys.executable, "-m", "edgecls", *args], env={**env, **hold}, stdout=sink,
                                       stderr=sink)
        running, kill = lambda: process.poll() is None, lambda: process.send_signal(signal.SIGKILL)
        reap = lambda: process.wait(timeout=600)  # noqa: E731
    else:
        parent.stdin.write(json.dumps({"args": args, "env": hold, "hook": HOLD_BEFORE_RENAME, "output": str(output)})
                           + "\n")
        parent.stdin.flush()
        pid = int(parent.stdout.readline())
        running = lambda: not select.select([parent.stdout], [], [], 0)[0]  # noqa: E731  (its exit code not yet out)
        kill, reap = lambda: os.kill(pid, signal.SIGKILL), lambda: int(parent.stdout.readline())  # noqa: E731
    returncode = None
    try:
        deadline = time.monotonic() + 600
        while stop_at and (not log.exists() or len(log.read_text().splitlines()) < stop_at):
            assert running(), f"ended before rename {stop_at}: {output.read_text()}"
            assert time.monotonic() < deadline, "never reached the rename"
            time.sleep(0.05)
        if stop_at:
            kill()
    finally:
        returncode = reap()  # reaped: a zombie would still look like the owner of its temporary files
    if not stop_at:
        assert returncode == 0, output.read_text()
    return log.read_text().splitlines() if log.exists() else []


def what_readers_see(out: Path, model: str = "new2") -> dict[str, tuple[str, str]]:
    """For each export file of `model` in `out`: ("ok", checkpoint sha256) or ("refused", message), the same for
    every reader of it (the runtime, `edgecls build`'s ModelMetadata.read, bench's reference loader)."""
    def runtime(path: Path) -> str:
        with load(path) as classifier:
            return classifier.metadata.checkpoint_sha256

    seen = {}
    for name in ExportSet.member_names(model):
        path = out / name
        if not path.exists():
            continue
        readers = [lambda: references.from_file(path).checkpoint_sha256] if name.endswith(".npz") else \
            [lambda: ModelMetadata.read(path).checkpoint_sha256, lambda: runtime(path)]
        answers = set()
        for read in readers:
            try:
                answers.add(("ok", read()))
            except EdgeclsError as exc:
                answers.add(("refused", str(exc)))
        assert len(answers) == 1, f"the readers of {name} disagree: {answers}"
        seen[name] = answers.pop()
    return seen


@pytest.fixture
def forked_edgecls(tmp_path: Path) -> Iterator[subprocess.Popen]:
    with forking_parent(subprocess_env(tmp_path)) as parent:
        yield parent


def test_an_export_killed_anywhere_leaves_one_complete_set_or_a_refusal(tmp_path, trained_checkpoint, tiny_data_dir,
                                                                        forked_edgecls):
    """SIGKILL a real `edgecls export` while it writes its files and before each rename of its install step; after
    each kill every reader sees the earlier complete set, or refuses every file with one line: never a mix. The next
    export completes and sweeps what the killed ones left."""
    first = trained_checkpoint("new2")
    second = other_checkpoint(first, tmp_path / "other.pt")
    shas = {first: load_checkpoint(first).sha256, second: load_checkpoint(second).sha256}
    out, calibration = tmp_path / "export", tmp_path / "calibration"
    watch = [out, calibration, out / ".export.*"]  # the install, and the staging folder it installs from

    def export(checkpoint: Path, stop_at: int) -> list[str]:
        return run_held(["export", "--checkpoint", str(checkpoint), "--data", str(tiny_data_dir), "--out", str(out),
                         "--fp16", "--int8", "--calibration-size", "50", "--calibration-dir", str(calibration)],
                        watch, stop_at, {}, tmp_path, forked_edgecls)

    system_temporaries = set(Path(tempfile.gettempdir()).glob("edgecls-quant-*"))
    renames = export(first, 0)  # one whole export: the set the others try to replace
    installing = [i for i, folder in enumerate(renames, 1) if folder in (str(out), str(calibration))]
    staging = [i for i in range(1, len(renames) + 1) if i not in installing]
    # record (incomplete), 4 files, calibration record, record (complete); staging: 3 ONNX files, the reference, ...
    assert len(installing) == 7 and len(staging) >= 4, renames
    assert what_readers_see(out) == {name: ("ok", shas[first]) for name in ExportSet.member_names("new2")}

    # Kill while staging (its first rename, one inside a folder of the staging folder -- quantization's, whose
    # leftovers used to stay in the system's temporary folder -- and its last), then before each kind of rename of the
    # install: the incomplete record, the first and the last of the 4 files (the two between go through the same loop
    # between the same two states: some files new, some old, under the incomplete record), the calibration record,
    # the complete record.
    nested = [i for i in staging if Path(renames[i - 1]).parent.name.startswith(".export.")][:1]
    for stop_at in [staging[0], *nested, staging[-1], *installing[:2], *installing[-3:]]:
        export(second, stop_at)  # another checkpoint than the installed set's: a mix would show
        seen = what_readers_see(out)
        verdicts = {verdict for verdict, _ in seen.values()}
        assert len(verdicts) == 1, f"killed before rename {stop_at}: some files accepted, some refused: {seen}"
        if verdicts == {"ok"}:  # the earlier set, whole: the kill came before the install began
            assert stop_at <= installing[0] and seen == {name: ("ok", shas[first]) for name in seen}
            assert sorted(seen) == sorted(ExportSet.read(ExportSet.path_for(out, "new2")).files)
        else:
            assert stop_at > installing[0]
            for _, message in seen.values():
                assert "\n" not in message and "was interrupted while installing" in message, message
                assert "run `edgecls export` again" in message

    # The CLI says so too: predict refuses, bench --all reports each file and goes on.
    image = tmp_path / "one.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    code, output = run_cli("predict", str(image), "--engine", str(out / "new2.int8.onnx"))
    assert code == 2 and "was interrupted while installing" in error_line(output)
    code, output = run_cli("bench", "--all", str(first), "--data", str(tiny_data_dir), "--export-dir", str(out),
                           "--engines-dir", str(tmp_path / "engines"), "--batch-sizes", "1", "--duration", "0",
                           "--warmup", "0")
    assert code == 0, output
    for name in ("new2.onnx", "new2.fp16.onnx", "new2.int8.onnx"):
        row = next(line for line in output.splitlines() if line.startswith(str(out / name)))
        assert "was interrupted while installing" in row, output
    assert "new2.reference.npz not used" in output

    # Killed processes left staging folders and a calibration temporary, all in the output folders (none in the
    # system's temporary folder): the next export sweeps them and installs.
    debris = [p.name for folder in (out, calibration) for p in folder.iterdir() if p.name.startswith(".")]
    assert debris, "the kills left nothing to sweep: the test did not kill where it meant to"
    assert set(Path(tempfile.gettempdir()).glob("edgecls-quant-*")) <= system_temporaries
    export(second, 0)
    assert sorted(p.name for p in out.iterdir()) == sorted([*ExportSet.member_names("new2"), "new2.export.json"])
    assert [p.name for p in calibration.iterdir()] == ["new2.percentile.json"]
    assert what_readers_see(out) == {name: ("ok", shas[second]) for name in ExportSet.member_names("new2")}


def test_a_killed_checkpoint_save_keeps_the_last_good_one_and_its_temporary_is_swept(tmp_path, small_data_dir):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOLD_BEFORE_RENAME)
    out = tmp_path / "checkpoints"
    # Renames into checkpoints/: epoch 1's new1.pt and log, then epoch 2's new1.pt, where it is killed.
    run_held(["train", "--model", "new1", "--data", str(small_data_dir), "--epochs", "3", "--batch-size", "20",
              "--val-split", "10", "--device", "cpu", "--out", str(out)], [out], 3, subprocess_env(tmp_path, hooks),
             tmp_path)
    leftovers = [p for p in out.iterdir() if p.name.startswith(".new1.pt.")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the complete, never installed epoch 2
    assert load_checkpoint(out / "new1.pt").epoch == 1
    ensure_writable_dir(out)  # what every later command writing there does first
    assert sorted(p.name for p in out.iterdir()) == ["new1.log.jsonl", "new1.pt"]


def test_only_temporaries_whose_owner_is_gone_are_swept(tmp_path):
    """A temporary name says which machine and process own it: a dead owner's is removed at once, a live one's never,
    another machine's once a day old (its owner cannot be checked from here)."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()

    def name(label: str, pid: int, host: str | None = None) -> str:
        ours = temporary_prefix(label).replace(f"-{os.getpid()}-", f"-{pid}-")
        return (ours if host is None else ours.replace(ours.split(".")[-1].split("-")[0], host)) + "abcdefgh.tmp"

    here = temporary_prefix("x").split(".")[-1].split("-")[0]
    elsewhere = "000000" if here != "000000" else "ffffff"
    files = {
        name("new2.pt", finished.pid): "removed",  # a killed checkpoint save
        name("export", finished.pid) + "/": "removed",  # a killed export's staging folder
        name("new2.pt", os.getpid()): "kept",  # this process: still writing
        name("new2.pt", 1, elsewhere): "kept",  # another machine's, recent
        name("new2.onnx", 2, elsewhere): "old",  # another machine's, two days old: removed
        ".notes.abcdefgh.tmp": "kept",  # not an edgecls name: never touched
        "new2.pt": "kept",
    }
    for name, fate in files.items():
        path = tmp_path / name.rstrip("/")
        if name.endswith("/"):
            path.mkdir()
            (path / "new2.onnx").write_bytes(b"staged")
        else:
            path.write_bytes(b"x")
        if fate == "old":
            os.utime(path, (time.time() - 2 * 86400,) * 2)
    ensure_writable_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n.rstrip("/") for n, f in files.items() if f == "kept")


# ===================================================================================== full disk

@functools.lru_cache(maxsize=1)
def no_small_disk() -> str | None:
    """Why a test cannot mount a small tmpfs in a private mount namespace here (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c",
                            'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d" && rmdir "$d"'],
                           capture_output=True, text=True)
    if probe.returncode:
        return f"cannot mount a tmpfs in a user namespace here ({probe.stderr.strip() or probe.returncode})"
    return None


def run_on_small_disks(disks: dict[Path, str], script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the shell `script` in a private mount namespace where each folder of `disks` is a fresh tmpfs of the given
    size (e.g. "3m"): a real full disk, gone when the script ends (so the script copies out what the test checks)."""
    mounts = [f"mount -t tmpfs -o size={size} tmpfs {folder}" for folder, size in disks.items()]
    for folder in disks:
        folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", " && ".join([*mounts, script])],
                          env=env, capture_output=True, text=True, timeout=600)


needs_small_disk = pytest.mark.skipif(no_small_disk() is not None, reason=f"full-disk test: {no_small_disk()}")
EDGECLS = f"{sys.executable} -m edgecls"


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) if p.is_file() else "folder" for p in sorted(folder.iterdir())}


@needs_small_disk
def test_export_onto_a_full_disk_says_which_and_changes_nothing(tmp_path, trained_checkpoint, tiny_data_dir,
                                                                tiny_cifar):
    earlier = tmp_path / "earlier"
    export_model(ExportRequest(trained_checkpoint("new2"), earlier), data=tiny_cifar, progress=False)  # fp32: 3.4 MB
    before = snapshot(earlier)
    other = other_checkpoint(trained_checkpoint("new2"), tmp_path / "other.pt")
    out, copy = tmp_path / "small", tmp_path / "after"
    copy.mkdir()
    # 5 MB: the earlier export fits, a second fp32 file beside it does not.
    result = run_on_small_disks({out: "5m"}, f"cp -a {earlier}/. {out}/ && {EDGECLS} export --checkpoint {other} "
                                f"--data {tiny_data_dir} --out {out}; echo exit=$?; cp -a {out}/. {copy}/",
                                subprocess_env(tmp_path))
    assert "exit=2" in result.stdout, result.stdout + result.stderr
    line = the_error(result.stderr)  # naming the user's folder, not the staging folder inside it
    assert f"no space left on the disk holding {out} while writing " in line
    assert line.endswith("free space or choose another folder (files already there are unchanged)")
    assert snapshot(copy) == before  # the earlier set, whole; no staging folder left


@needs_small_disk
def test_a_full_calibration_folder_changes_nothing(tmp_path, trained_checkpoint, tiny_data_dir, tiny_cifar):
    out, calibration = tmp_path / "export", tmp_path / "calibration"
    earlier_calibration = tmp_path / "earlier_calibration"
    request = ExportRequest(trained_checkpoint("new2"), out, int8=True, calibration=CalibrationSettings(size=50),
                            calibration_dir=earlier_calibration)
    export_model(request, data=tiny_cifar, progress=False)
    before, calibration_before = snapshot(out), snapshot(earlier_calibration)
    other = other_checkpoint(trained_checkpoint("new2"), tmp_path / "other.pt")
    copy = tmp_path / "after"
    copy.mkdir()
    # 12 KB: the earlier record (about 7 KB) fits, a second one beside it does not.
    result = run_on_small_disks({calibration: "12k"}, f"cp -a {earlier_calibration}/. {calibration}/ && {EDGECLS} "
                                f"export --checkpoint {other} --data {tiny_data_dir} --out {out} --int8 "
                                f"--calibration-size 50 --calibration-dir {calibration}; echo exit=$?; "
                                f"cp -a {calibration}/. {copy}/", subprocess_env(tmp_path))
    assert "exit=2" in result.stdout, result.stdout + result.stderr
    line = the_error(result.stderr)
    assert f"no space left on the disk holding {calibration} while writing new2.percentile.json" in line
    assert snapshot(out) == before and snapshot(copy) == calibration_before


@needs_small_disk
def test_train_onto_a_full_disk_keeps_the_last_checkpoint(tmp_path, small_data_dir):
    out, copy = tmp_path / "checkpoints", tmp_path / "after"
    copy.mkdir()
    # new1's checkpoint takes about 1.8 MB with its resume state: epoch 1's fits in 3 MB, epoch 2's beside it does not.
    result = run_on_small_disks({out: "3m"}, f"{EDGECLS} train --model new1 --data {small_data_dir} --epochs 3 "
                                "--batch-size 20 --val-split 10 --device cpu "
                                f"--out {out}; echo exit=$?; cp -a {out}/. {copy}/", subprocess_env(tmp_path))
    assert "exit=2" in result.stdout, result.stdout + result.stderr
    assert f"no space left on the disk holding {out} while writing new1.pt" in the_error(result.stderr)
    assert sorted(p.name for p in copy.iterdir()) == ["new1.log.jsonl", "new1.pt"]  # no temporary left
    assert load_checkpoint(copy / "new1.pt").epoch == 1


def test_a_write_the_disk_refuses_keeps_the_old_file(tmp_path, monkeypatch):
    """The same at the OS boundary, wherever the tests run: fsync reporting ENOSPC (as it does on NFS)."""
    target = tmp_path / "new2.pt"
    target.write_bytes(b"the last good checkpoint")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(EdgeclsError) as info:
        with atomic_write(target) as handle:
            handle.write(b"x" * 1000)
    assert str(info.value) == (f"no space left on the disk holding {tmp_path} while writing new2.pt; free space or "
                               "choose another folder (files already there are unchanged)")
    assert target.read_bytes() == b"the last good checkpoint" and [p.name for p in tmp_path.iterdir()] == ["new2.pt"]
    with staging_dir(tmp_path, "export") as staging, pytest.raises(EdgeclsError) as info:
        with atomic_write(staging / "new2.onnx") as handle:  # inside a staging folder: the user's folder is named
            handle.write(b"x")
    assert str(info.value).startswith(f"no space left on the disk holding {tmp_path} while writing new2.onnx;")
    assert [p.name for p in tmp_path.iterdir()] == ["new2.pt"]


# ===================================================================================== one decoder

def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (what Pillow cannot write: 48-bit RGB, or a header claiming any size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def encodings(image: np.ndarray) -> dict[str, tuple[bytes, np.ndarray]]:
    """One 32x32 RGB picture in many pixel formats: name -> (file bytes, the 8-bit RGB pixels it must decode to)."""
    def save(picture: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, fmt, **options)
        return buffer.getvalue()

    gray = image[:, :, 1]
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    palette = Image.fromarray(image).quantize(64)
    rgb48 = b"".join(b"\x00" + (row.astype(np.uint16) * 257).astype(">u2").tobytes() for row in image)
    cmyk = Image.fromarray(image).convert("CMYK")
    return {
        "rgb": (save(Image.fromarray(image)), image),
        "gray 8-bit": (save(Image.fromarray(gray)), gray3),
        "gray 16-bit": (save(Image.fromarray(gray.astype(np.uint16) * 257)), gray3),
        "gray 16-bit pgm": (b"P5\n32 32\n65535\n" + (gray.astype(np.uint16) * 257).astype(">u2").tobytes(), gray3),
        "rgb 48-bit": (png_bytes(32, 32, 16, 2, rgb48), image),
        "rgba": (save(Image.fromarray(np.dstack([image, np.full((32, 32), 9, np.uint8)]))), image),
        "gray + alpha": (save(Image.merge("LA", [Image.fromarray(gray)] * 2)), gray3),
        "palette": (save(palette), np.asarray(palette.convert("RGB"))),
        "1-bit": (save(Image.fromarray(gray > 128)), np.repeat(np.where(gray > 128, 255, 0).astype(np.uint8)[:, :, None],
                                                               3, axis=2)),
        "cmyk tiff": (save(cmyk, "TIFF"), np.asarray(cmyk.convert("RGB"))),
    }


def test_training_data_and_predict_decode_every_pixel_format_alike(tmp_path, tiny_cifar, new2_export):
    picture = tiny_cifar.test_images[7]
    cases = encodings(picture)
    for name, (blob, expected) in cases.items():
        np.testing.assert_array_equal(decode(blob, name), expected, err_msg=name)

    # The same files inside a training tree and given to predict: the same pixels, the same answers.
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for label, class_name in enumerate(tiny_cifar.class_names):
            (tree / split / class_name).mkdir(parents=True)
            Image.fromarray(tiny_cifar.train_images[label]).save(tree / split / class_name / "plain.png")
    files = []
    for index, (blob, _) in enumerate(cases.values()):  # named .png, whatever the format: Pillow reads the content
        path = tree / "train" / "cat" / f"{index:02d}.png"
        path.write_bytes(blob)
        files.append(path)
    loaded = load_cifar10(tree, cache=False)
    cats = loaded.train_images[loaded.train_labels == loaded.class_names.index("cat")]
    for (name, (_, expected)), found in zip(cases.items(), cats[:len(cases)]):
        np.testing.assert_array_equal(found, expected, err_msg=name)
    with load(new2_export.files["fp32"]) as classifier:
        expected_top = classifier.classify(np.stack([expected for _, expected in cases.values()])).top_k(1)
    code, output = run_cli("predict", *map(str, files), "--engine", str(new2_export.files["fp32"]), "--top-k", "1")
    assert code == 0, output
    assert [line.split(": ", 1)[1].split()[0] for line in output.strip().splitlines()] == \
        [ranked[0][0] for ranked in expected_top]


def test_a_large_photo_decodes_to_exactly_its_pixels(tmp_path):
    """Large images are copied out of Pillow a band of rows at a time (to save two full copies): nothing is lost."""
    rows, cols = np.indices((3000, 2500))
    picture = np.dstack([rows % 256, cols % 256, (rows * cols) % 251]).astype(np.uint8)  # 22 MB: two bands
    Image.fromarray(picture).save(tmp_path / "photo.png")
    decoded = decode(tmp_path / "photo.png")
    assert decoded.flags.writeable and np.array_equal(decoded, picture)


def test_pixels_whose_range_is_unknown_are_refused_in_both_places(tmp_path, tiny_cifar, new2_export):
    floating = tmp_path / "tree" / "train" / "cat" / "float.png"  # a TIFF, under the name the data loader reads
    for split in ("train", "test"):
        for class_name in tiny_cifar.class_names:
            (tmp_path / "tree" / split / class_name).mkdir(parents=True)
            Image.fromarray(tiny_cifar.test_images[0]).save(tmp_path / "tree" / split / class_name / "a.png")
    Image.fromarray(np.full((32, 32), 0.5, np.float32)).save(floating, "TIFF")
    with pytest.raises(EdgeclsError, match=f"image {floating} has floating-point pixels"):
        load_cifar10(tmp_path / "tree", cache=False)
    code, output = run_cli("predict", str(floating), "--engine", str(new2_export.files["fp32"]))
    assert code == 2 and f"image {floating} has floating-point pixels" in error_line(output)


# ===================================================================================== memory and time bounds

def gzip_repeating(path: Path, head: bytes, block: bytes, count: int, tail: bytes) -> Path:
    """A real gzip file of head + `count` times block + tail, a few MB on disk whatever `count`, made without
    compressing it all: after a full flush deflate starts afresh, so each further block compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, in the gzip wrapper written below
    start = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) == repeated
    end = compressor.compress(tail) + compressor.flush()
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(tail, crc)
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + start)  # gzip header
        for _ in range(count):
            out.write(repeated)
        size = len(head) + count * len(block) + len(tail)
        out.write(end + struct.pack("<II", crc, size & 0xFFFFFFFF))
    return path


def gzip_tar_bomb(path: Path, member: str, size: int) -> Path:
    """A .tar.gz whose one member is `size` bytes of zeros."""
    info = tarfile.TarInfo(member)
    info.size = size
    zeros = size + (-size) % 512 + 1024  # the member, its padding to a block, the end-of-archive blocks
    return gzip_repeating(path, info.tobuf(format=tarfile.GNU_FORMAT), bytes(MB), zeros // MB, bytes(zeros % MB))


def test_decompression_bombs_are_refused_from_their_headers(tmp_path):
    bomb = gzip_tar_bomb(tmp_path / "bomb.tar.gz", "train/cat/0001.png", 2500 * MB)
    assert bomb.stat().st_size < 4 * MB
    with gzip.open(bomb) as stream:  # a genuine archive, whose member header says 2.5 GB
        assert tarfile.open(fileobj=stream, mode="r|").next().size == 2500 * MB
    refused, peak = traced_peak(lambda: pytest.raises(EdgeclsError, load_cifar10, bomb, cache=False))
    assert f"{bomb}:train/cat/0001.png is 2,621,440,000 bytes, far more than any image edgecls reads" in str(refused.value)
    assert peak < 16 * MB, peak  # the member was never read (it used to take more than 2.5 GB)

    # A member that is not an image would be skipped, not read, but an archive this large is refused all the same.
    other = gzip_tar_bomb(tmp_path / "video.tar.gz", "extras/video.bin", 2100 * MB)
    with pytest.raises(EdgeclsError, match="unpacks to more than 2 GB"):
        load_cifar10(other, cache=False)

    # So is one of more members than any CIFAR-10 form has (here empty files: each costs a header and a record).
    empty = tarfile.TarInfo("extras/empty")
    flood = gzip_repeating(tmp_path / "flood.tar.gz", b"", empty.tobuf(format=tarfile.GNU_FORMAT) * 1000, 301,
                           bytes(1024))
    with pytest.raises(EdgeclsError) as refused:
        load_cifar10(flood, cache=False)
    assert str(refused.value) == (f"archive {flood} has more than 300,000 members, far more than CIFAR-10; it is not "
                                  "CIFAR-10 data or is damaged")

    # Images whose header claims more pixels than the cap are refused before a pixel is decoded.
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_bytes(10000, 10000, 8, 2, bytes(30001) * 4))
    refused, peak = traced_peak(lambda: pytest.raises(EdgeclsError, decode, huge))
    assert str(refused.value) == (f"image {huge} is 10000x10000 pixels, more than the {MAX_IMAGE_PIXELS // MB} "
                                  "megapixels edgecls decodes; shrink it first")
    assert peak < 16 * MB, peak
    huge.write_bytes(png_bytes(30000, 30000, 8, 2, bytes(90001) * 4))  # beyond Pillow's own limit too
    with pytest.raises(EdgeclsError, match=f"image {huge} has more than the {MAX_IMAGE_PIXELS // MB} megapixels"):
        decode(huge)


def test_a_long_thin_image_costs_no_more_than_a_square_one(new2_export, tmp_path):
    thin = tmp_path / "thin.png"
    thin.write_bytes(png_bytes(100000, 1, 8, 2, b"\x00" + bytes(range(250)) * 1200))
    assert thin.stat().st_size < 4000  # a few KB, which used to take 3.7 GB to classify
    with load(new2_export.files["fp32"]) as classifier:
        _, peak = traced_peak(lambda: classifier.classify(decode(thin)))
    assert peak < 32 * MB, peak


def test_predict_streams_any_number_of_images(new2_export, tmp_path):
    """Memory holds one decoded image and one batch of small ones, whatever the number of files."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rows, cols = np.indices((240, 320))
    for index in range(600):  # 230 KB each once decoded: 138 MB if they were all held at once
        picture = np.dstack([(rows + index) % 256, (cols * 3) % 256, np.full_like(rows, index % 256)]).astype(np.uint8)
        Image.fromarray(picture).save(folder / f"{index:04d}.png")
    engine = str(new2_export.files["fp32"])
    some = [str(p) for p in sorted(folder.iterdir())[:60]]
    (code_some, output_some), peak_some = traced_peak(lambda: run_cli("predict", *some, "--engine", engine))
    (code_all, output_all), peak_all = traced_peak(lambda: run_cli("predict", str(folder), "--engine", engine))
    assert code_some == code_all == 0 and len(output_all.strip().splitlines()) == 600
    assert [line.split(": ")[0] for line in output_all.splitlines()[:60]] == some
    assert peak_all < peak_some + 8 * MB and peak_all < 48 * MB, (peak_some, peak_all)


def test_bench_batch_sizes_are_bounded_before_any_work(new2_export, tmp_path, tiny_data_dir):
    missing_data = str(tmp_path / "no_data")
    engine = str(new2_export.files["fp32"])
    code, output = run_cli("bench", "--engine", engine, "--data", missing_data, "--batch-sizes", "1,100000")
    assert code == 2 and f"batch sizes [1, 100000] must lie between 1 and {BENCH_MAX_BATCH}" in error_line(output)

    # An engine whose batch is fixed at 8 (here an ONNX file exported so): 16 is refused, naming its limit.
    import onnx

    model = onnx.load(engine)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 8
    fixed = tmp_path / "fixed8.onnx"
    onnx.save(model, str(fixed))
    code, output = run_cli("bench", "--engine", str(fixed), "--data", str(tiny_data_dir), "--batch-sizes", "1,16",
                           "--duration", "0", "--warmup", "0")
    assert code == 2 and f"{fixed} accepts batches of at most 8 images" in error_line(output)


# ===================================================================================== checked before long work

def test_the_most_specific_input_is_checked_first(tmp_path, new2_export):
    no_data = str(tmp_path / "no_data")
    code, output = run_cli("bench", "--engine", str(tmp_path / "engines" / "new2.plan"), "--data", no_data)
    assert code == 2 and "model file" in output and "new2.plan does not exist; build it with `edgecls build`" in output
    engine = str(new2_export.files["fp32"])
    code, output = run_cli("bench", "--engine", engine, "--data", no_data, "--reference", str(tmp_path / "ref.npz"))
    assert code == 2 and "reference" in error_line(output) and "ref.npz does not exist" in output
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for json_path, fragment in ((blocker / "out.json", "is a file, not a folder"), (tmp_path, "is a folder")):
        code, output = run_cli("bench", "--engine", engine, "--data", no_data, "--json", str(json_path))
        assert code == 2 and fragment in error_line(output), output
    code, output = run_cli("predict", str(tmp_path / "missing.jpg"), "--engine", str(tmp_path / "missing.onnx"))
    assert code == 2 and "missing.onnx does not exist; make it with `edgecls export`" in error_line(output)
    code, output = run_cli("export", "--checkpoint", str(tmp_path / "missing.pt"), "--calibration-seed", "-1")
    assert code == 2 and "calibration seed -1 is negative" in error_line(output)


# ===================================================================================== one line, not a traceback

def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line_in_export(tmp_path, trained_checkpoint,
                                                                              tiny_data_dir):
    record = torch.load(trained_checkpoint("new2"), weights_only=True)
    fields = {key: value for key, value in record.items() if key not in ("format", "format_version")}
    weights = dict(fields["state_dict"])
    first = next(iter(weights))
    cases = {"other model": {**fields, "model": "alex1"},
             "missing keys": {**fields, "state_dict": {k: v for k, v in weights.items() if k != first}},
             "wrong shapes": {**fields, "state_dict": {**weights, first: torch.zeros(3, 3)}}}
    for name, changed in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        save_checkpoint(path, changed)
        code, output = run_cli("export", "--checkpoint", str(path), "--data", str(tiny_data_dir), "--out",
                               str(tmp_path / "export"))
        assert code == 2 and f"checkpoint {path}: its weights do not fit model" in error_line(output), name


def test_an_onnx_file_whose_input_disagrees_with_its_metadata_is_one_line(tmp_path, new2_export, tiny_data_dir):
    import onnx

    model = onnx.load(str(new2_export.files["fp32"]))
    metadata = ModelMetadata.read(new2_export.files["fp32"])
    ModelMetadata.from_dict({**metadata.to_dict(), "preprocess": {**metadata.preprocess.to_dict(), "crop_size": 24}},
                            "test").embed(model)  # the graph takes 28 x 28
    lying = tmp_path / "lying.onnx"
    onnx.save(model, str(lying))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    for args in (("bench", "--engine", str(lying), "--data", str(tiny_data_dir)), ("predict", str(image), "--engine",
                                                                                   str(lying))):
        code, output = run_cli(*args)
        assert code == 2 and "has shape ['batch', 3, 28, 28], but its metadata says [batch, 3, 24, 24]" in \
            error_line(output), args


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block as `nobody` when the tests run as root (who reads every folder), else as the user running them."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_tree(tiny_cifar) -> Iterator[Path]:
    """tiny_cifar as an image tree in a folder every user may read (tmp_path is root's alone)."""
    from conftest import write_image_folder

    base = Path(tempfile.mkdtemp(prefix="edgecls-permissions-"))
    base.chmod(0o755)
    small = tiny_cifar.subset(train=20, test=10)
    write_image_folder(small, base / "tree")
    for path in (base / "tree").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        yield base
    finally:
        for path in base.rglob("*"):
            path.chmod(0o755)
        shutil.rmtree(base)


def test_an_unreadable_class_folder_is_one_line(shared_tree, new2_export, monkeypatch):
    locked = shared_tree / "tree" / "train" / "cat"
    locked.chmod(0)
    engine = shutil.copy(new2_export.files["fp32"], shared_tree / "new2.onnx")
    monkeypatch.setenv("EDGECLS_CACHE", str(shared_tree / "cache"))
    expected = (f"cannot read {locked} (Permission denied); check that the data is readable (permissions) and pass it "
                "with --data")
    with unprivileged():
        code, output = run_cli("bench", "--engine", str(engine), "--data", str(shared_tree / "tree"))
        assert code == 2 and error_line(output) == f"error: {expected}"
        with pytest.raises(EdgeclsError) as info:
            load_cifar10(shared_tree / "tree")
    assert str(info.value) == expected


def test_an_unreadable_cache_folder_costs_time_not_the_run(shared_tree, monkeypatch, capsys):
    cache = shared_tree / "cache"
    cache.mkdir()
    cache.chmod(0)
    monkeypatch.setenv("EDGECLS_CACHE", str(cache))
    with unprivileged():
        loaded = load_cifar10(shared_tree / "tree")
    assert len(loaded.train_images) == 20 and len(loaded.test_images) == 10
    warnings = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all(str(cache) in line for line in warnings), warnings


def test_the_python_api_misused_is_one_line(new2_export):
    classifier = Classifier.load(new2_export.files["fp32"])
    with pytest.raises(EdgeclsError, match="classify takes pixels, not a file .'cat.jpg'.; read image files with"):
        classifier.classify("cat.jpg")
    for wrong, kind in ((None, "NoneType"), (7, "int"), ({"image": 1}, "dict")):
        with pytest.raises(EdgeclsError, match=f"expected uint8 images .an array, or a list of arrays., got {kind}"):
            classifier.classify(wrong)
    with pytest.raises(EdgeclsError, match="an image of 0x0 pixels has nothing to classify"):
        classifier.classify(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(EdgeclsError, match="an image of 0x5 pixels"):
        classifier.classify([np.zeros((32, 32, 3), np.uint8), np.zeros((0, 5), np.uint8)])
    classifier.close()
    with pytest.raises(EdgeclsError, match="is closed; load the model again"):
        classifier.classify(np.zeros((32, 32, 3), np.uint8))
