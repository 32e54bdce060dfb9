"""edgecls.artifacts at its edges: the bounds of every read (a record, an .npz's declared arrays, a file hashed), the
kinds of file an output must never replace, which file a managed artifact is, and how the owner of a temporary name
is recognised (this process, a live writer, a later process with a reused id). Real files in a temporary folder;
no large file is written."""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import socket
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import refusal
from edgecls import artifacts
from edgecls.artifacts import (artifact_kind, check_npz_sizes, check_output_file, check_regular_file, live_writer,
                               output_target, read_at_most, read_bounded, sha256_file, staging_dir, sweep_abandoned,
                               temporary_prefix, write_json)

MB = 1 << 20


# ================================================================================================= bounded reads

class ChunkedReader(io.RawIOBase):
    """A stream that answers at most `chunk` bytes per read (a pipe, a socket), recording what each read asked."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk, self.asked = data, chunk, []

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        block, self.data = self.data[:min(size, self.chunk)], self.data[min(size, self.chunk):]
        return block


def test_read_at_most_reads_one_byte_past_the_limit_in_blocks_of_a_megabyte():
    data = bytes(range(256)) * (12 * 1024)  # 3 MB
    reader = ChunkedReader(data, chunk=len(data))
    assert read_at_most(reader, 2 * MB + MB // 2) == data[:2 * MB + MB // 2 + 1]  # one more byte says "more"
    assert reader.asked == [MB, MB, MB // 2 + 1]
    short = ChunkedReader(data[:100], chunk=len(data))
    assert read_at_most(short, 2 * MB) == data[:100] and short.asked == [MB, MB]  # ends at the end of the data
    assert read_at_most(ChunkedReader(b"", 1), 10) == b""


def test_read_at_most_still_reads_past_the_limit_when_reads_come_in_short_pieces():
    # A pipe that delivers 5 bytes a time reaches exactly the limit: only one more read says whether more follows.
    reader = ChunkedReader(b"0123456789abcdefghij", chunk=5)
    assert read_at_most(reader, 10) == b"0123456789a" and reader.asked == [11, 6, 1]
    assert read_at_most(ChunkedReader(b"0123456789", chunk=5), 10) == b"0123456789"


def test_read_bounded_takes_a_file_of_exactly_the_limit_and_refuses_one_byte_more(tmp_path):
    path = tmp_path / "record.json"
    path.write_bytes(b"r" * (3 * MB))
    assert read_bounded(path, "bench file", limit=3 * MB) == b"r" * (3 * MB)
    assert refusal(read_bounded, path, "bench file", 3 * MB - 1) == (
        f"bench file {path} is larger than 2 MB, far larger than any edgecls bench file; check the path")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert refusal(read_bounded, folder, "bench file") == (f"bench file {folder} is a folder, not a regular file; give "
                                                           "the file itself")


def test_a_file_that_grows_while_it_is_read_is_cut_at_the_limit_and_refused(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    path.write_bytes(b"r" * (3 * MB - 1))  # within the limit when its size is checked ...
    checked = artifacts.check_regular_file

    def then_grows(file: str | os.PathLike, what: str) -> os.stat_result:
        info = checked(file, what)
        with open(file, "ab") as handle:  # ... and two bytes longer by the time it is read
            handle.write(b"rr")
        return info

    monkeypatch.setattr(artifacts, "check_regular_file", then_grows)
    assert refusal(read_bounded, path, "int8 report", 3 * MB) == \
        f"int8 report {path} is larger than 3 MB; check the path"
    path.write_bytes(b"r" * (3 * MB - 2))  # grows to exactly the limit: still taken
    assert len(read_bounded(path, "int8 report", 3 * MB)) == 3 * MB


def test_sha256_file_reads_in_blocks_of_a_megabyte(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    data = os.urandom(2 * MB + 7)
    path.write_bytes(data)
    asked = []

    class Recording(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            asked.append(size)
            return super().read(size)

    monkeypatch.setattr(artifacts, "open", lambda file, mode: Recording(file, mode.replace("b", "")), raising=False)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert asked == [MB] * 4  # three blocks and the empty read that ends them: never the whole file at once


# ================================================================================================= .npz declared sizes

def npz_of_headers(path: Path, members: list[tuple[str, tuple[int, ...], str, tuple[int, int]]]) -> Path:
    """An .npz whose members hold only an array header (name, shape, dtype, header version): it declares arrays of
    any size while the file stays tiny. A member not named .npy holds its shape as text."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, shape, dtype, version in members:
            with archive.open(name, "w") as member:
                if not name.endswith(".npy"):
                    member.write(str(shape).encode())
                    continue
                header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
                writer = np.lib.format.write_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.write_array_header_2_0
                writer(member, header)
    return path


def test_check_npz_sizes_adds_every_declared_array_whatever_its_header_version(tmp_path):
    path = npz_of_headers(tmp_path / "new2.reference.npz", [
        ("notes.txt", (10 ** 12,), "u1", (1, 0)),  # not an array: not counted, and the arrays after it still are
        ("logits.npy", (1024, 1024), "<f4", (1, 0)),  # 4 MB
        ("labels.npy", (512, 1024), "<i8", (2, 0)),  # 4 MB, in the header version numpy uses for wide headers
    ])
    check_npz_sizes(path, "reference", limit=8 * MB)  # exactly the limit: taken
    assert refusal(check_npz_sizes, path, "reference", 8 * MB - 1) == (
        f"reference {path} declares 8 MB of arrays, more than the 7 MB any edgecls reference holds; check the path")
    assert refusal(check_npz_sizes, path, "reference", 6 * MB) == (
        f"reference {path} declares 8 MB of arrays, more than the 6 MB any edgecls reference holds; check the path")
    only_v2 = npz_of_headers(tmp_path / "v2.npz", [("logits.npy", (1024, 1024), "<f8", (2, 0))])
    assert refusal(check_npz_sizes, only_v2, "reference", 4 * MB).startswith(f"reference {only_v2} declares 8 MB ")


def test_check_npz_sizes_counts_shapes_too_large_for_a_machine_integer(tmp_path):
    path = npz_of_headers(tmp_path / "huge.npz", [("logits.npy", (1 << 32, 1 << 32), "u1", (1, 0))])  # 2**64 bytes
    assert refusal(check_npz_sizes, path, "reference").startswith(
        f"reference {path} declares 17,592,186,044,416 MB of arrays, more than the 512 MB")


def test_check_npz_sizes_refuses_what_is_not_a_file_and_leaves_damage_to_numpy(tmp_path):
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    assert refusal(check_npz_sizes, folder, "reference") == (f"reference {folder} is a folder, not a regular file; "
                                                             "give the file itself")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"PK not really")
    check_npz_sizes(damaged, "reference")  # numpy's reader says what is wrong with it


# ================================================================================================= kinds of file

def test_every_kind_of_file_that_is_not_a_regular_file_is_named():
    kinds = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a named pipe (FIFO)",
             stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "not a regular file"}
    assert {mode: artifacts._file_type(mode | 0o644) for mode in kinds} == kinds


def special_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A FIFO and a socket in `tmp_path`, and /dev/null: what an output must never replace."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    listening = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(tmp_path)  # a socket's path has a short limit (108 bytes): bind it by its name alone
    listening.bind("socket.json")
    listening.close()  # the socket file stays
    return {"a named pipe (FIFO)": fifo, "a socket": tmp_path / "socket.json", "a character device": Path("/dev/null")}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and sockets")
def test_an_output_that_is_not_a_regular_file_is_refused_naming_what_it_is(tmp_path, monkeypatch):
    for kind, path in special_files(tmp_path, monkeypatch).items():
        assert refusal(check_output_file, path) == (f"{path} is {kind}, not a regular file: edgecls writes an output "
                                                   "by replacing a regular file or creating a new one; give a file "
                                                   "name")
        assert refusal(check_output_file, path, (), (), True).endswith("; give a file name, or - for standard output")
        assert refusal(check_regular_file, path, "bench file") == (f"bench file {path} is {kind}, not a regular "
                                                                   "file; give the file itself")
        if path.parent == tmp_path:  # the last guard of every write, should a check have been skipped
            assert refusal(write_json, path, {}) == (f"{path} is {kind}, not a regular file; edgecls replaces only "
                                                     "regular files: give a file name")
    link = tmp_path / "out.json"
    link.symlink_to("/dev/null")
    assert refusal(check_output_file, link).startswith(f"{link} (a link to /dev/null) is a character device, not a ")


def test_an_output_path_that_cannot_be_looked_up_is_refused_with_the_systems_reason(tmp_path):
    loop, back = tmp_path / "loop.json", tmp_path / "back.json"
    loop.symlink_to(back)
    back.symlink_to(loop)
    assert refusal(check_output_file, loop) == (f"cannot write {loop} (Too many levels of symbolic links); choose "
                                                "another path")


def test_an_existing_regular_output_is_replaced_unless_it_is_an_input_or_another_kind_of_artifact(tmp_path):
    tmp_path = tmp_path.resolve()  # links are reported by the real path they name
    output, data = tmp_path / "bench.json", tmp_path / "data.tar.gz"
    output.write_text("{}")
    data.write_bytes(b"images")
    assert check_output_file(output) == output
    assert check_output_file(output, [None, tmp_path / "missing.onnx", data]) == output  # inputs that are not it
    alias = tmp_path / "alias.json"
    os.link(output, alias)  # the same file under another name
    assert refusal(check_output_file, alias, [None, tmp_path / "missing.onnx", output]) == (
        f"{alias} is {output}, an input of this command: writing the output there would destroy it; give another file "
        "name")
    model = tmp_path / "new2.onnx"
    model.write_bytes(b"onnx")
    assert refusal(check_output_file, model) == (f"{model} is an edgecls ONNX model, which this command does not "
                                                 "write: it will not be replaced; give another file name")
    assert check_output_file(model, (), {"ONNX model"}) == model
    link = tmp_path / "latest.onnx.json"
    link.symlink_to(model)
    assert refusal(check_output_file, link).startswith(f"{link} (a link to {model}) is an edgecls ONNX model, ")
    assert check_output_file(link, (), {"ONNX model"}) == model  # written through the link


def test_output_target_is_the_file_a_link_names_and_the_path_itself_otherwise(tmp_path):
    tmp_path = tmp_path.resolve()
    real, link, dangling = tmp_path / "real.json", tmp_path / "link.json", tmp_path / "dangling.json"
    real.write_text("old")
    link.symlink_to(real)
    dangling.symlink_to(tmp_path / "sub" / "new.json")
    assert output_target(real) == real and output_target(tmp_path / "new.json") == tmp_path / "new.json"
    assert output_target("out/bench.json") == Path("out/bench.json")  # a relative name stays as given
    assert output_target(link) == real and output_target(str(dangling)) == tmp_path / "sub" / "new.json"
    write_json(link, {"new": True})
    assert link.is_symlink() and real.read_text() == '{\n  "new": true\n}\n'


ARTIFACT_KINDS = {
    "new2.export.json": "export record", "new2.int8.plan.json": "engine manifest", "new2.log.jsonl": "training log",
    "new2.pt": "checkpoint", "NEW2.FP16.ONNX": "ONNX model", "new2.plan": "TensorRT engine",
    "new2.engine": "TensorRT engine", "new2.reference.npz": "reference logits file", "bench.json": None,
    "notes.txt": None,
}


def test_artifact_kind_knows_the_managed_files_by_name(tmp_path):
    for name, kind in ARTIFACT_KINDS.items():
        (tmp_path / name).write_text('{"format": "edgecls-calibration"}' if name.endswith("txt") else "{}")
        assert artifact_kind(tmp_path / name) == kind, name


@pytest.mark.parametrize("marker, kind", [("edgecls-calibration", "calibration record"),
                                          ("edgecls-int8-report", "int8 report"),
                                          ("edgecls-bench-record", "bench record"),  # "record" is not doubled
                                          ("edgecls-triton-repository", "triton repository record")])
def test_artifact_kind_knows_a_record_by_the_marker_at_its_start(tmp_path, marker, kind):
    path = tmp_path / "Record.JSON"
    path.write_text(f'{{"format": "{marker}", "format_version": 1}}')
    assert artifact_kind(path) == kind
    assert artifact_kind(str(path)) == kind


def test_artifact_kind_reads_only_the_first_four_kilobytes_of_a_json_file(tmp_path):
    marker = b'"format": "edgecls-calibration"'
    path = tmp_path / "record.json"
    path.write_bytes(b" " * (4096 - len(marker)) + marker + b"}")  # the marker ends at the 4096th byte
    assert artifact_kind(path) == "calibration record"
    path.write_bytes(b" " * (4097 - len(marker)) + marker + b"}")  # one byte later: past what is read
    assert artifact_kind(path) is None
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert artifact_kind(folder) is None  # cannot be read: no kind


# ================================================================================================= owners of names

def name_of(owner: int, label: str, start: str | int | None = None, host: str | None = None) -> str:
    """A temporary name as process `owner` would make it, with another start time or host when given."""
    mine = temporary_prefix(label)
    prefix = mine.replace(f"-{os.getpid()}-", f"-{owner}-")
    if start is not None:
        prefix = prefix.rsplit("-", 2)[0] + f"-{start}-"
    if host is not None:
        prefix = prefix.replace(f".{artifacts._HOST}-", f".{host}-")
    return prefix + "abcdefgh.tmp"


def test_live_writer_names_the_running_process_that_holds_a_label(tmp_path):
    assert live_writer(tmp_path / "missing", "export") is None
    (tmp_path / "new2.onnx").write_bytes(b"x")  # not a temporary name
    (tmp_path / name_of(os.getpid(), "bench")).mkdir()  # another label
    (tmp_path / name_of(os.getpid(), "export", host="abcdef")).mkdir()  # another machine's
    assert live_writer(tmp_path, "export") is None
    with staging_dir(tmp_path, "export"):
        assert live_writer(tmp_path, "export") == os.getpid()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    (tmp_path / name_of(finished.pid, "export")).mkdir()  # its owner has gone: not live
    assert live_writer(tmp_path, "export") is None


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc (process start times)")
def test_a_name_is_abandoned_when_its_id_now_belongs_to_a_later_process(tmp_path):
    started = artifacts._start_time(os.getpid())
    reused = tmp_path / name_of(os.getpid(), "new2.pt", start=started + 1)  # an earlier owner with this process's id
    unknown = tmp_path / name_of(os.getpid(), "new2.pt", start=0)  # written where start times were unknown
    older = tmp_path / name_of(os.getpid(), "old.pt").replace(f"-{started}-", "-")  # from before names had one
    ours = tmp_path / name_of(os.getpid(), "new2.onnx")
    for path in (reused, unknown, older, ours):
        path.write_bytes(b"x")
    assert sweep_abandoned(tmp_path) == [reused]
    assert sorted(tmp_path.iterdir()) == sorted([unknown, older, ours])


def test_a_name_that_vanishes_while_it_is_judged_is_not_abandoned(tmp_path):
    path = tmp_path / name_of(os.getpid(), "new2.pt", host="abcdef")  # another machine's: only its age can tell
    path.write_bytes(b"x")
    [entry] = list(os.scandir(tmp_path))
    path.unlink()  # another sweep removed it meanwhile
    assert artifacts._abandoned(artifacts._TEMPORARY_NAME.fullmatch(entry.name), entry) is False


def test_a_prefix_says_0_where_the_start_time_is_unknown(monkeypatch):
    monkeypatch.setattr(artifacts, "_start_time", lambda pid: None)
    assert temporary_prefix("new2.pt") == f".new2.pt.{artifacts._HOST}-{os.getpid()}-0-"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc")
def test_start_time_is_read_after_the_last_parenthesis_of_a_process_name(tmp_path):
    odd_name = tmp_path / "py) 1 2 3 (x"  # a name with a parenthesis, spaces and numbers in it
    odd_name.symlink_to(os.path.realpath(sys.executable))
    running = subprocess.Popen([str(odd_name), "-c", "import time; time.sleep(30)"])
    try:
        line = Path(f"/proc/{running.pid}/stat").read_text()
        assert "(py) 1 2 3 (x)" in line
        after_name = line[line.rindex(")") + 1:].split()
        assert artifacts._start_time(running.pid) == int(after_name[19])  # field 22 of proc(5)
    finally:
        running.kill()
        running.wait()


def test_a_dead_process_still_in_the_table_is_not_running(monkeypatch):
    monkeypatch.setattr(os, "kill", lambda pid, signal: None)  # the id exists ...
    real_path = artifacts.Path
    for state, running in (("X", False), ("Z", False), ("S", True), ("R", True)):
        stat_line = f"4242 (py) {state} 1 4242 " + "0 " * 40
        monkeypatch.setattr(artifacts, "Path", lambda p, line=stat_line: _Text(line) if str(p) == "/proc/4242/stat"
                            else real_path(p))
        assert artifacts._process_running(4242) is running, state


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text

    def read_text(self) -> str:
        return self.text


def no_proc(path: str) -> str:
    raise FileNotFoundError(path)


def test_the_host_tag_hashes_the_host_name_and_the_pid_namespace(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "jetson")
    tags = {}
    for namespace in ("pid:[4026531836]", "pid:[4026532201]"):
        links = {"/proc/self/ns/pid": namespace}  # the link naming this process's PID namespace, and no other
        monkeypatch.setattr(os, "readlink", lambda path, links=links: links.get(path) or no_proc(path))
        tags[namespace] = artifacts._process_space()
    assert len(set(tags.values())) == 2 and all(len(tag) == 6 for tag in tags.values())
    assert tags["pid:[4026531836]"] == hashlib.blake2b(b"jetson\0pid:[4026531836]", digest_size=3).hexdigest()

    monkeypatch.setattr(os, "readlink", no_proc)  # no /proc: the host name alone
    assert artifacts._process_space() == hashlib.blake2b(b"jetson\0", digest_size=3).hexdigest()


# ================================================================================================= worker processes

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_asks_linux_to_kill_it_with_its_parent_and_ends_if_its_parent_is_gone(monkeypatch):
    with monkeypatch.context() as elsewhere:  # another system: nothing is asked of its kernel, a live parent is kept
        elsewhere.setattr(sys, "platform", "darwin")
        elsewhere.setattr(ctypes, "CDLL", lambda *args, **kwargs: pytest.fail("prctl asked for outside Linux"))
        artifacts.end_with_parent(os.getppid())
    # On Linux, in a worker process of its own (a test process must not ask to die with its parent):
    check = textwrap.dedent("""
        import ctypes, os, sys
        from edgecls.artifacts import end_with_parent
        end_with_parent(os.getppid())
        signal = ctypes.c_int()
        ctypes.CDLL(None).prctl(2, ctypes.byref(signal))  # 2: PR_GET_PDEATHSIG
        print(signal.value)
        end_with_parent(os.getppid() + 1)  # not its parent: it ends at once
        print("still here")
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(artifacts.__file__).resolve().parents[1])}  # the edgecls tested here
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stdout.split(), done.stderr) == (1, ["9"], "")


def test_a_worker_without_prctl_still_ends_with_a_parent_that_is_gone(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(sys, "platform", "linux")

    def no_libc(name: object, use_errno: bool = False) -> None:
        raise OSError("no C library to load")

    for loader in (no_libc, lambda name, use_errno=False: object()):  # no libc; a libc without prctl
        monkeypatch.setattr(ctypes, "CDLL", loader)
        artifacts.end_with_parent(os.getppid())
        assert exits == []
        artifacts.end_with_parent(os.getppid() + 1)
        assert exits == [1]
        exits.clear()
