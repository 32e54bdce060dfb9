import os

import pytest

from edgecls.artifacts import atomic_write


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
