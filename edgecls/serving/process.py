"""`edgecls serve` as a child process, for the tests and benchmarks/bench_serve.py: started in a process group of its
own, ready once it has printed its endpoints, and ended, with everything it started, by `stop()` or on leaving the
`with` block (SIGTERM or SIGINT first, then SIGKILL to the whole group)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from edgecls.errors import EdgeclsError
from edgecls.serving.interpreter import repository_root

_ENDPOINT = re.compile(r"^(HTTP|gRPC|metrics)\s+(\S+)")


class ServerProcess:
    """`python -m edgecls serve ARGS`, with this edgecls package first on the path."""

    def __init__(self, args: Sequence[str], python: str = sys.executable, startup_timeout: float = 180.0) -> None:
        self.args = list(args)
        self.lines: list[str] = []  # everything it printed (stdout and stderr), for messages and tests
        self.endpoints: dict[str, str] = {}
        self._ready = threading.Event()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(repository_root()), os.environ.get("PYTHONPATH", "")) if p), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([python, "-m", "edgecls", "serve", *self.args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + startup_timeout
        while not self._ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._reader.join(5)
                code = self.process.poll()
                left = self.group_processes() if code is not None else []  # what it failed to end itself
                self.kill()
                why = f"exited with code {code}" if code is not None else f"not ready after {startup_timeout:g} s"
                if left:
                    why += f", leaving {len(left)} of its processes running (killed now)"
                raise EdgeclsError(f"edgecls serve {why}: {self.output_tail()}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            found = _ENDPOINT.match(line)
            if found:
                self.endpoints[found.group(1).lower()] = found.group(2)
            if line.startswith("stop with"):
                self._ready.set()

    def output_tail(self, count: int = 5) -> str:
        return " | ".join(self.lines[-count:]) or "(no output)"

    @property
    def http(self) -> str:
        return self.endpoints["http"]

    @property
    def grpc(self) -> str:
        return self.endpoints["grpc"]

    @property
    def metrics(self) -> str:
        return self.endpoints["metrics"]

    def group_processes(self) -> list[int]:
        """The processes still running in its process group (the server, tritonserver, the Python-backend stubs);
        ended ones not yet reaped (zombies) do not count."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    # /proc/PID/stat: "pid (name) state ppid pgrp ..."; the name may hold spaces and parentheses
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.process.pid and fields[0] != "Z":
                    pids.append(int(entry.name))
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> Optional[int]:
        """Send `sig` to the server process, wait for it and its group to end; its exit code (None: it had to be
        killed)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code: Optional[int] = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        deadline = time.monotonic() + 15
        while self.group_processes() and time.monotonic() < deadline:  # tritonserver ends just after its parent
            time.sleep(0.2)
        self.kill()
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL to every process left in its group, and wait (a little) for them to end."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while self.group_processes() and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
