"""Writing artifacts safely and describing where they came from (torch-free).

Every file is first written under a temporary name in its own folder, then renamed over its destination, so a
reader sees the old file or the new one, never half of one. Temporary names carry their owner (this machine and
process), so that what a killed process left behind is recognised and removed by the next run
(`ensure_writable_dir` sweeps it). A disk that fills up or refuses writes is one line naming the path.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Collection, Iterable, Iterator

from edgecls.errors import EdgeclsError

# Errors of the disk itself rather than of the program: each is one line naming the folder, never a traceback.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# A temporary file or staging folder whose owner cannot be checked (another machine sharing the folder) is
# abandoned once it is this old: no edgecls write takes a day.
STALE_AFTER_S = 24 * 3600
# A disk with less free space than this may be the one a "no space" error that names no file came from.
ROOM_BYTES = 1 << 30


def _process_space() -> str:
    """This machine and the process-id space its process ids belong to: the host name and, where there is one, the
    PID namespace (a container on the same host, with the same host name, numbers its processes apart)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.blake2b(f"{socket.gethostname()}\0{namespace}".encode(), digest_size=3).hexdigest()


_HOST = _process_space()
# .<label>.<host>-<pid>-<start>-<8 random characters from tempfile>.tmp; <start> (the process's start time, in clock
# ticks since boot) tells the owner from a later process that reuses its id; names without it are older edgecls's.
_TEMPORARY_NAME = re.compile(r"\.(?P<label>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-(?:(?P<start>\d+)-)?"
                             r"[a-z0-9_]{8}\.tmp")


def storage_error(exc: OSError, folder: str | os.PathLike, writing: str) -> EdgeclsError:
    """An error of the disk while writing `writing` into `folder`, as one line that says where and what to do."""
    folder, other_folder = _disk_that_failed(exc, folder)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why, fix = f"no space left on the disk holding {folder}", f"free space or {other_folder}"
    elif exc.errno == errno.EROFS:
        why, fix = f"{folder} is on a read-only file system", other_folder
    elif exc.errno == errno.EFBIG:
        why, fix = f"a file would exceed the largest size allowed in {folder}", other_folder
    else:
        why = f"cannot write in {folder} ({exc.strerror or type(exc).__name__})"
        fix = "check its permissions or choose another folder"
    return EdgeclsError(f"{why} while writing {writing}; {fix} (files already there are unchanged)")


def _disk_that_failed(exc: OSError, folder: str | os.PathLike) -> tuple[str, str]:
    """The folder to name for `exc`, raised while writing into `folder`, and where else to write."""
    while _TEMPORARY_NAME.fullmatch(Path(folder).name):  # a staging folder: name the user's folder that holds it
        folder = Path(folder).parent
    temporary = tempfile.gettempdir()
    failed = os.path.abspath(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
    if failed is not None and not _inside(failed, folder):  # a library's file elsewhere
        folder = os.path.dirname(failed)
        elsewhere = _inside(folder, temporary)
    else:  # a "no space" that names no file is the temporary folder's when only its disk is short of room
        elsewhere = failed is None and exc.errno in (errno.ENOSPC, errno.EDQUOT) and \
            _free_bytes(temporary) < ROOM_BYTES <= _free_bytes(folder)
        folder = temporary if elsewhere else folder
    if elsewhere:
        return f"{folder} (the temporary folder, $TMPDIR)", "set TMPDIR to a folder with room"
    return str(folder), "choose another folder"


def _free_bytes(folder: str | os.PathLike) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def is_storage_error(exc: OSError) -> bool:
    """Whether `exc` is the disk's fault (full, read-only, over a size limit) rather than the program's."""
    return exc.errno in _STORAGE_ERRNOS


def check_output_folder(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output folder that could not be written; creates nothing (the folders' half of
    `check_output_file`). Refused: an existing path that is not a folder (a file, a device, a FIFO), a folder that is
    not writable, a new name below a file or below a folder that takes no new entries. Returns the folder."""
    folder = Path(path)
    try:
        info = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        _check_can_create(folder)
        return folder
    except OSError as exc:
        raise EdgeclsError(f"cannot use output folder {folder} ({exc.strerror}); choose another folder") from exc
    if not stat.S_ISDIR(info.st_mode):
        kind = "a file" if stat.S_ISREG(info.st_mode) else _file_type(info.st_mode)
        raise EdgeclsError(f"output folder {folder} is {kind}, not a folder; give a folder (it is created if new)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EdgeclsError(f"output folder {folder} is not writable; fix its permissions or choose another folder")
    return folder


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Check `path` (`check_output_folder`), create it if needed, and remove what killed edgecls processes left there
    (`sweep_abandoned`)."""
    folder = check_output_folder(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeclsError(f"cannot create output folder {folder}: {exc.strerror}; choose another folder") from exc
    sweep_abandoned(folder)
    return folder


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Path]:
    """`ensure_writable_dir(path)` for the work of a with block; the folders it had to create are removed again at
    the end if they hold nothing then (the work failed or wrote nothing): a failed command creates no folder."""
    folder = Path(path)
    created = []  # deepest first
    for above in (folder, *folder.parents):
        if above.exists():
            break
        created.append(above)
    try:
        yield ensure_writable_dir(folder)
    finally:
        for made in created:
            try:
                made.rmdir()  # only an empty folder goes
            except OSError:
                break


# Where a command prints JSON (`bench --json -`, `doctor --json -`), this name means standard output.
STDOUT = "-"

# The files of managed artifact sets, recognised by name or by their record's "format" marker: an output of another
# kind (a bench JSON, a report) never replaces one of them, nor any file the command reads.
_KIND_BY_ENDING = {".export.json": "export record", ".plan.json": "engine manifest", ".log.jsonl": "training log",
                   ".pt": "checkpoint", ".onnx": "ONNX model", ".plan": "TensorRT engine",
                   ".engine": "TensorRT engine", ".npz": "reference logits file"}
_MARKER = re.compile(rb'"format"\s*:\s*"edgecls-([a-z0-9-]+)"')  # the records' markers, as edgecls.formats writes them


def artifact_kind(path: str | os.PathLike) -> str | None:
    """Which kind of managed edgecls artifact the regular file `path` is (e.g. "ONNX model", "calibration record"),
    or None for any other file. Reads at most the first 4 KB (a record's marker comes first)."""
    name = Path(path).name.lower()
    for ending, kind in _KIND_BY_ENDING.items():
        if name.endswith(ending):
            return kind
    if name.endswith(".json"):
        try:
            with open(path, "rb") as handle:
                found = _MARKER.search(handle.read(4096))
        except OSError:
            return None
        if found is not None:  # a calibration marker -> "calibration record", an int8-report one -> "int8 report"
            words = found[1].decode().replace("-", " ")
            return words if words.endswith(("record", "report")) else f"{words} record"
    return None


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def output_target(path: str | os.PathLike) -> Path:
    """The file a write to `path` replaces: `path` itself, or, when `path` is a symbolic link, the file it points to
    (links are written through, like the shell's `>`: the link stays and its target gets the new contents)."""
    target = Path(path)
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def check_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                      writes: Collection[str] = (), stdout_ok: bool = False) -> Path:
    """Refuse, before any work, an output file that must not or could not be written; creates nothing.

    Refused: a path that is one of the command's `inputs` (the same file under any name); an existing file that is not
    a regular file (a device such as /dev/null, a FIFO, a socket, a folder); a file of a managed artifact set whose
    kind (`artifact_kind`) is not one of the kinds the command `writes`; a folder that cannot be created or written.
    A symbolic link is written through (`output_target`): these checks apply to the file it points to.
    `stdout_ok`: the command takes `-` for standard output, which the message then suggests for a device.
    Returns the file to write.
    """
    given = Path(path)
    try:
        target = output_target(given)
    except OSError as exc:  # a name the system refuses (too long, a link loop ...)
        raise EdgeclsError(f"cannot write {given} ({exc.strerror}); choose another path") from exc
    shown = str(given) if target == given else f"{given} (a link to {target})"
    try:
        info = os.stat(given)  # follows the link to what it names, even a pipe behind /dev/stdout
    except (FileNotFoundError, NotADirectoryError):  # a new name (a file on the way is explained below)
        info = None
    except OSError as exc:
        raise EdgeclsError(f"cannot write {shown} ({exc.strerror}); choose another path") from exc
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise EdgeclsError(f"{shown} is a folder; give a file name for the output")
    if info is not None and not stat.S_ISREG(info.st_mode):
        also = f", or {STDOUT} for standard output" if stdout_ok else ""
        raise EdgeclsError(f"{shown} is {_file_type(info.st_mode)}, not a regular file: edgecls writes an output by "
                           f"replacing a regular file or creating a new one; give a file name{also}")
    if info is not None:
        for source in inputs:
            if source is None:
                continue
            try:
                same = os.path.samefile(source, target)
            except OSError:
                continue
            if same:
                raise EdgeclsError(f"{shown} is {source}, an input of this command: writing the output there would "
                                   "destroy it; give another file name")
        kind = artifact_kind(target)
        if kind is not None and kind not in writes:
            raise EdgeclsError(f"{shown} is an edgecls {kind}, which this command does not write: it will not be "
                               "replaced; give another file name")
    _check_can_create(target)
    return target


def _check_can_create(target: Path) -> None:
    """Refuse `target` when the nearest existing folder above it is a file or takes no new entries."""
    existing = target.parent.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EdgeclsError(f"cannot write {target}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EdgeclsError(f"cannot write {target}: folder {existing} is not writable; choose another path")
    try:  # permissions do not tell everything (root, /proc, a read-only mount): a nameless file that vanishes does
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise EdgeclsError(f"cannot write {target}: folder {existing} takes no new files ({exc.strerror}); "
                           "choose another path") from exc


def temporary_prefix(label: str) -> str:
    """The start of a temporary name for `label`: it says which machine (and PID namespace) and which process, by id
    and start time, own it (`sweep_abandoned`)."""
    pid = os.getpid()
    return f".{label}.{_HOST}-{pid}-{_start_time(pid) or 0}-"


@contextlib.contextmanager
def _temporary_file(target: Path, mode: str) -> Iterator[tuple[IO[Any], Path]]:
    """A new temporary file beside `target`, flushed to disk and given the usual permissions when the block ends;
    deleted when it fails. Errors of the disk become one line naming the folder."""
    folder = ensure_writable_dir(target.parent)
    try:
        fd, name = tempfile.mkstemp(prefix=temporary_prefix(target.name), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise storage_error(exc, folder, target.name) from exc
    temporary = Path(name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle, temporary
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts get the usual permissions
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        if isinstance(exc, OSError) and is_storage_error(exc):
            raise storage_error(exc, folder, target.name) from exc
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success rename it over `path`, on failure delete it.

    A reader therefore sees either the old file or the complete new one, never a half-written file; a full disk
    is an EdgeclsError naming the folder, and the old file stays.
    """
    _refuse_special(Path(path))
    target = output_target(path)
    with _temporary_file(target, mode) as (handle, temporary):
        yield handle
    try:
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _refuse_special(target: Path) -> None:
    """The last guard of every write: renaming a new file over a device, a FIFO or a socket would replace the node
    itself (as root, /dev/null), so only a regular file or a new name is ever replaced."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise EdgeclsError(f"{target} is {_file_type(mode)}, not a regular file; edgecls replaces only regular files: "
                           "give a file name")


def copy_beside(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy `source` to a temporary file in `destination`'s folder and return its path. Renaming it into place later
    (`os.replace`) writes no data, so that step cannot fail for lack of space; the caller renames or deletes it."""
    _refuse_special(Path(destination))  # renamed over it later: never over a device or a FIFO
    with _temporary_file(Path(destination), "wb") as (handle, temporary):
        with open(source, "rb") as data:
            shutil.copyfileobj(data, handle)
    return temporary


@contextlib.contextmanager
def staging_dir(folder: str | os.PathLike, label: str) -> Iterator[Path]:
    """A private folder inside `folder` for files that are installed together later (same disk, so installing is a
    rename); removed when the block ends, and by a later run's sweep when this process is killed. `folder` is made if
    new, and removed again if nothing was installed in it (`output_folder`)."""
    with output_folder(folder) as parent:
        try:
            staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(label), suffix=".tmp", dir=parent))
        except OSError as exc:
            raise storage_error(exc, parent, f"the {label} staging folder") from exc
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def temporary_files_in(folder: str | os.PathLike) -> Iterator[None]:
    """Meanwhile, what libraries write to the system's temporary folder (ONNX Runtime's quantization makes
    $TMPDIR/pre.quant.* and ort.quant.*) goes into `folder`: a staging folder, which the sweep removes when the
    process is killed. Not for threads that write temporary files of their own meanwhile (tempfile's setting is
    process-wide)."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def sweep_abandoned(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and staging folders in `folder` whose owner is gone: a process of this machine
    that no longer runs, or, for another machine's, anything older than STALE_AFTER_S. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # an unreadable folder: its writes will say what is wrong
    for entry in entries:
        match = _TEMPORARY_NAME.fullmatch(entry.name)
        if match is None or not _abandoned(match, entry):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue  # removed meanwhile by another sweep, or not ours to remove: either way, nothing to do
        removed.append(Path(entry.path))
    return removed


def live_writer(folder: str | os.PathLike, label: str) -> int | None:
    """The id of a process of this machine, still running, that holds a staging folder or temporary file named for
    `label` in `folder` (an export installing its files, say), else None: readers then say "in progress", not
    "interrupted"."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _TEMPORARY_NAME.fullmatch(entry.name)
            if match is not None and match["label"] == label and match["host"] == _HOST and \
                    not _abandoned(match, entry):
                return int(match["pid"])
    return None


def _abandoned(match: re.Match, entry: os.DirEntry) -> bool:
    pid = int(match["pid"])
    if match["host"] == _HOST:
        running = pid == os.getpid() or _process_running(pid)
        started = _start_time(pid) if running else None
        if not running or (match["start"] not in (None, "0") and started is not None and str(started) != match["start"]):
            return True  # its owner is gone, or its id now belongs to a later process
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat, field 22); None where unknown."""
    if os.name != "posix":
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return int(stat_file.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_running(pid: int) -> bool:
    """Whether a process with this id runs here (a zombie, killed but not yet reaped, does not)."""
    if os.name != "posix":
        return True  # no cheap, harmless check elsewhere (os.kill would end it on Windows): age decides there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the process exists
    return state not in ("Z", "X")


def end_with_parent(parent_pid: int) -> None:
    """Run first in a worker process (a pool's initializer): Linux kills it with SIGKILL when its parent dies
    (PR_SET_PDEATHSIG), so that no worker outlives a command killed with kill -9; a parent already gone ends it now."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def library_versions(*modules: str) -> dict[str, str]:
    """Versions of python, edgecls and whichever of `modules` are already imported or importable."""
    import importlib

    from edgecls import __version__

    versions = {"python": platform.python_version(), "edgecls": __version__}
    for name in modules:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except Exception:  # not installed: simply not recorded
            continue
    return versions


# The largest JSON record edgecls reads (its own are a few MB at most) and the most an .npz may declare: a hostile
# or wrong file (/dev/zero, a 10^8 x 10 array in a 4 MB archive) is refused before it is read or allocated.
MAX_RECORD_BYTES = 64 << 20
MAX_ARRAYS_BYTES = 512 << 20


def check_regular_file(path: str | os.PathLike, what: str) -> os.stat_result:
    """Refuse, before opening it, a file that is not a regular file (a FIFO would block the read forever, a device
    such as /dev/zero never ends); FileNotFoundError passes through for the caller's own message."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise EdgeclsError(f"{what} {path} is {_file_type(info.st_mode)}, not a regular file; give the file itself")
    return info


def read_bounded(path: str | os.PathLike, what: str, limit: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else one line naming it (checked before reading, and
    while reading: a file that grows meanwhile is cut off at the limit and refused)."""
    if check_regular_file(path, what).st_size > limit:
        raise EdgeclsError(f"{what} {path} is larger than {limit >> 20} MB, far larger than any edgecls {what}; "
                           "check the path")
    with open(path, "rb") as handle:
        data = read_at_most(handle, limit)
    if len(data) > limit:
        raise EdgeclsError(f"{what} {path} is larger than {limit >> 20} MB; check the path")
    return data


def read_at_most(handle: IO[bytes], limit: int) -> bytes:
    """What `handle` holds, up to `limit` + 1 bytes (one more says it holds more), read in 1 MB blocks: a single
    read(limit + 1) would allocate the whole limit at once, whatever the file's size."""
    blocks, size = [], 0
    while size <= limit:
        block = handle.read(min(1 << 20, limit + 1 - size))
        if not block:
            break
        blocks.append(block)
        size += len(block)
    return b"".join(blocks)


def check_npz_sizes(path: str | os.PathLike, what: str, limit: int = MAX_ARRAYS_BYTES) -> None:
    """Refuse an .npz archive whose arrays declare more than `limit` bytes in all, from their headers alone, before
    numpy allocates them. Damaged archives pass through: numpy's reader reports them."""
    import zipfile

    import numpy as np

    check_regular_file(path, what)
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(handle)
                total += int(np.prod(shape, dtype=object)) * dtype.itemsize
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return
    if total > limit:
        raise EdgeclsError(f"{what} {path} declares {total / (1 << 20):,.0f} MB of arrays, more than the "
                           f"{limit >> 20} MB any edgecls {what} holds; check the path")
