"""edgecls.artifacts: atomic writes, disk errors as one line, output checks and the sweep of what killed processes
left, on real files in a temporary folder."""

import datetime
import errno
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecls import artifacts
from edgecls.artifacts import (atomic_write, check_output_file, check_output_folder, copy_beside, ensure_writable_dir,
                               is_storage_error, library_versions, output_folder, sha256_file, storage_error,
                               sweep_abandoned, temporary_prefix, utc_now, write_json)
from edgecls.errors import EdgeclsError


def test_artifacts_get_the_usual_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.bin") as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_atomic_write_syncs_then_renames_over_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    reader = open(target, "rb")  # a reader that opened the old file keeps seeing it whole
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    with atomic_write(target) as handle:
        handle.write(b"new contents")
        temporary = os.fstat(handle.fileno()).st_ino
        assert target.read_bytes() == b"old"  # nothing visible before the end
    assert target.read_bytes() == b"new contents"
    assert synced == [temporary]  # the data reached the disk before the rename made it visible
    assert target.stat().st_ino == temporary  # renamed into place, not copied over the old file
    assert reader.read() == b"old"
    reader.close()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_disk_errors_are_one_line_naming_the_users_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "_free_bytes", lambda folder: 0)  # that folder's disk is indeed the full one
    staging = tmp_path / (temporary_prefix("export") + "abcdefgh.tmp")
    cases = {errno.ENOSPC: f"no space left on the disk holding {tmp_path} while writing new2.onnx; free space or "
                           "choose another folder",
             errno.EDQUOT: f"no space left on the disk holding {tmp_path} while writing new2.onnx; free space or "
                           "choose another folder",
             errno.EROFS: f"{tmp_path} is on a read-only file system while writing new2.onnx; choose another folder",
             errno.EFBIG: f"a file would exceed the largest size allowed in {tmp_path} while writing new2.onnx; "
                          "choose another folder",
             errno.EACCES: f"cannot write in {tmp_path} (Permission denied) while writing new2.onnx; check its "
                           "permissions or choose another folder"}
    for code, message in cases.items():
        for folder in (tmp_path, staging, staging / (temporary_prefix("new2.onnx") + "abcdefgh.tmp")):
            error = storage_error(OSError(code, os.strerror(code)), folder, "new2.onnx")
            assert str(error) == message + " (files already there are unchanged)"
        assert is_storage_error(OSError(code, os.strerror(code))) is (code != errno.EACCES)
    assert str(storage_error(OSError(), tmp_path, "x.json")).startswith(f"cannot write in {tmp_path} (OSError) while")


def test_ensure_writable_dir_creates_the_folder_or_says_why_it_cannot(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b" / "c"
    assert ensure_writable_dir(deep) == deep and deep.is_dir()
    assert ensure_writable_dir(str(deep)) == deep
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgeclsError) as info:
        ensure_writable_dir(tmp_path / "file" / "out")
    assert str(info.value) == f"cannot write {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, not a folder; " \
                              "choose another path"
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK)  # a read-only folder, even for root
    with pytest.raises(EdgeclsError) as info:
        ensure_writable_dir(deep)
    assert str(info.value) == f"output folder {deep} is not writable; fix its permissions or choose another folder"


def test_an_output_folder_is_checked_without_being_made_and_removed_when_left_empty(tmp_path):
    new = tmp_path / "a" / "b"
    assert check_output_folder(new) == new and list(tmp_path.iterdir()) == []
    with output_folder(new) as made:
        assert made.is_dir()
    assert list(tmp_path.iterdir()) == []  # nothing was written there: the folders it made are gone again
    with pytest.raises(RuntimeError), output_folder(new):
        (tmp_path / "a" / "kept.txt").write_text("x")
        raise RuntimeError
    assert [p.name for p in tmp_path.rglob("*")] == ["a", "kept.txt"]  # a folder that holds something stays


def test_preparing_a_folder_removes_the_staging_folder_a_finished_process_left(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    left = tmp_path / (temporary_prefix("export").replace(f"-{os.getpid()}-", f"-{finished.pid}-") + "abcdefgh.tmp")
    (left / "half").mkdir(parents=True)
    (left / "half" / "new2.onnx").write_bytes(b"x")
    ours = tmp_path / (temporary_prefix("export") + "ijklmnop.tmp")  # this process's: still in use
    ours.mkdir()
    assert ensure_writable_dir(tmp_path) == tmp_path
    assert sorted(tmp_path.iterdir()) == [ours]


def test_check_output_file_refuses_early_and_creates_nothing(tmp_path, monkeypatch):
    target = tmp_path / "new" / "deeper" / "bench.json"
    assert check_output_file(target) == target and not (tmp_path / "new").exists()
    assert check_output_file(str(target)) == target
    with pytest.raises(EdgeclsError) as info:
        check_output_file(tmp_path)
    assert str(info.value) == f"{tmp_path} is a folder; give a file name for the output"
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgeclsError) as info:
        check_output_file(tmp_path / "file" / "sub" / "bench.json")
    assert str(info.value) == (f"cannot write {tmp_path / 'file' / 'sub' / 'bench.json'}: {tmp_path / 'file'} is a "
                               "file, not a folder; choose another path")
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.X_OK)  # a folder that cannot be entered
    with pytest.raises(EdgeclsError) as info:
        check_output_file(target)
    assert str(info.value) == f"cannot write {target}: folder {tmp_path} is not writable; choose another path"
    monkeypatch.undo()
    assert sorted(tmp_path.iterdir()) == [tmp_path / "file"]  # the checks left nothing behind


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, a folder no one can add files to")
def test_check_output_file_refuses_a_folder_that_takes_no_files_whatever_the_permissions_say():
    # /proc lets root "write" by its permission bits, yet takes no new file: only trying tells.
    with pytest.raises(EdgeclsError) as info:
        check_output_file("/proc/edgecls/bench.json")
    message = str(info.value)
    assert message.startswith("cannot write /proc/edgecls/bench.json: folder /proc ") and message.endswith(
        "; choose another path")


def test_copy_beside_makes_a_complete_temporary_copy_in_the_destinations_folder(tmp_path):
    source, destination = tmp_path / "source.onnx", tmp_path / "export" / "new2.onnx"
    source.write_bytes(b"weights" * 1000)
    copy = copy_beside(source, destination)
    assert copy.parent == destination.parent and copy.name.startswith(temporary_prefix("new2.onnx"))
    assert copy.read_bytes() == source.read_bytes() and not destination.exists()
    assert copy.stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_sweep_returns_what_it_removed_and_leaves_the_rest(tmp_path, tmp_path_factory, monkeypatch):
    """Temporaries of a process that exited (reaped or not) go; a running one's, another user's, anything that
    fails to go, and what a symbolic link points to stay."""
    reaped = subprocess.Popen([sys.executable, "-c", "pass"])
    reaped.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exited, never waited for
    # The running process is named "py) Z (x": its /proc stat line reads "PID (py) Z (x) S ...", state S.
    odd_name = tmp_path_factory.mktemp("bin") / "py) Z (x"
    odd_name.symlink_to(os.path.realpath(sys.executable))
    running = subprocess.Popen([str(odd_name), "-c", "import time; time.sleep(60)"])
    try:
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        ours = f"-{os.getpid()}-{artifacts._start_time(os.getpid())}-"  # a name carries its owner's start time too
        names = {pid: temporary_prefix("new2.pt").replace(ours, f"-{pid}-{artifacts._start_time(pid) or 0}-") +
                 "abcdefgh.tmp" for pid in (reaped.pid, zombie.pid, running.pid)}
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        target = tmp_path / "kept-folder"
        target.mkdir()
        (target / "model.onnx").write_bytes(b"x")
        link = tmp_path / (temporary_prefix("export").replace(f"-{os.getpid()}-", f"-{reaped.pid}-") + "linkxxxx.tmp")
        link.symlink_to(target)
        assert sorted(sweep_abandoned(tmp_path)) == sorted([tmp_path / names[reaped.pid], tmp_path / names[zombie.pid],
                                                             link])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[running.pid], "kept-folder"])
        assert (target / "model.onnx").exists()
        with pytest.raises(subprocess.TimeoutExpired):  # asking whether it runs sent it no signal that ends it
            running.wait(timeout=0.5)
    finally:
        running.kill()
        running.wait()
        zombie.wait()
    assert sweep_abandoned(tmp_path / "missing") == []
    for name in ("a", "b"):
        (tmp_path / (temporary_prefix(name).replace(f"-{os.getpid()}-", f"-{reaped.pid}-") + "abcdefgh.tmp")).write_text("")
    real_unlink, real_scandir = os.unlink, os.scandir
    monkeypatch.setattr(os, "scandir", lambda folder: sorted(real_scandir(folder), key=lambda entry: entry.name))
    monkeypatch.setattr(os, "unlink", lambda path: real_unlink(path) if ".b." in str(path) else (_ for _ in ()).throw(
        PermissionError(path)))
    assert [p.name.split(".")[1] for p in sweep_abandoned(tmp_path)] == ["b"]  # "a" (first) cannot go; "b" still does


def test_when_a_process_cannot_be_checked_age_decides(tmp_path, monkeypatch):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    name = temporary_prefix("new2.pt").replace(f"-{os.getpid()}-", f"-{finished.pid}-") + "abcdefgh.tmp"
    (tmp_path / name).write_bytes(b"x")

    def another_users(pid: int, signal: int) -> None:
        raise PermissionError(pid)

    with monkeypatch.context() as patch:
        patch.setattr(os, "kill", another_users)
        assert sweep_abandoned(tmp_path) == []
    with monkeypatch.context() as patch:
        patch.setattr(os, "kill", lambda pid, signal: None)  # the process exists ...
        real_path = artifacts.Path
        patch.setattr(artifacts, "Path", lambda p: real_path("/no/proc/here") if str(p).startswith("/proc/") else
                      real_path(p))  # ... and there is no /proc (macOS)
        assert sweep_abandoned(tmp_path) == []
    with monkeypatch.context() as patch:
        patch.setattr(os, "name", "nt")  # no cheap, harmless check of a process on Windows: only age counts there
        assert sweep_abandoned(tmp_path) == []
    with monkeypatch.context() as patch:
        patch.setattr(os, "kill", another_users)
        os.utime(tmp_path / name, (time.time() - artifacts.STALE_AFTER_S + 60,) * 2)
        assert sweep_abandoned(tmp_path) == []
        os.utime(tmp_path / name, (1_000_000_000,) * 2)
        patch.setattr(artifacts.time, "time", lambda: 1_000_000_000 + artifacts.STALE_AFTER_S)
        assert sweep_abandoned(tmp_path) == []  # exactly STALE_AFTER_S old: not yet
        patch.setattr(artifacts.time, "time", lambda: 1_000_000_001 + artifacts.STALE_AFTER_S)
        assert sweep_abandoned(tmp_path) == [tmp_path / name]
        # A symbolic link's own age counts, not its target's: an old link to a fresh folder goes (the folder stays).
        target = tmp_path / "fresh-folder"
        target.mkdir()
        link = tmp_path / name
        link.symlink_to(target)
        os.utime(link, (1_000_000_000,) * 2, follow_symlinks=False)
        assert sweep_abandoned(tmp_path) == [link] and target.is_dir()


def test_write_json_writes_indented_json_in_the_given_order(tmp_path):
    write_json(tmp_path / "record.json", {"z": 1, "a": [1, 2], "m": {"b": None}})
    assert (tmp_path / "record.json").read_text() == \
        '{\n  "z": 1,\n  "a": [\n    1,\n    2\n  ],\n  "m": {\n    "b": null\n  }\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_sha256_file_reads_files_larger_than_one_block(tmp_path):
    data = os.urandom(3 * (1 << 20) + 5)
    (tmp_path / "big.bin").write_bytes(data)
    assert sha256_file(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty.bin").write_bytes(b"")
    assert sha256_file(str(tmp_path / "empty.bin")) == hashlib.sha256(b"").hexdigest()


def test_utc_now_and_library_versions(monkeypatch):
    stamp = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    parsed = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - parsed).total_seconds()) < 5
    monkeypatch.setenv("TZ", "Asia/Kathmandu")  # UTC+05:45: local time would be off by hours
    time.tzset()
    try:
        later = datetime.datetime.strptime(utc_now(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert abs((datetime.datetime.now(datetime.timezone.utc) - later).total_seconds()) < 5
    import numpy

    import edgecls

    assert library_versions("no_such_module_here", "numpy", "edgecls.errors") == {
        "python": platform.python_version(), "edgecls": edgecls.__version__, "numpy": numpy.__version__}
