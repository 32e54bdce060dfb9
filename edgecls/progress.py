"""Progress bars that suit where they are shown: tqdm's bar on a terminal; on anything else (a log file, a pipe, CI)
a plain line now and then, since a bar's carriage-return redraws fill a log with hundreds of updates."""

from __future__ import annotations

import io
import sys
from typing import IO, Any, Iterable, Optional

from tqdm import tqdm

# Seconds between the plain lines written to a non-terminal (and the first and last are always written).
PLAIN_INTERVAL_S = 30.0


class _PlainLines(io.TextIOBase):
    """A stream for tqdm that turns its redraws ("\\r" + status) into whole lines, dropping the blank ones."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            if sys.stdout is not None and sys.stdout is not self.stream:
                sys.stdout.flush()  # in a log that holds both, what was printed before comes before
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Optional[Iterable[Any]] = None, *, file: Optional[IO[str]] = None, disable: bool = False,
                 **options: Any) -> tqdm:
    """tqdm with `options` (total, desc, unit, leave, ...), shown on `file` (default stderr) as a bar on a terminal
    and as a few plain lines elsewhere; nothing where there is no stream (stderr closed)."""
    stream = sys.stderr if file is None else file
    if stream is None:
        return tqdm(iterable, disable=True, **options)
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        terminal = False
    if terminal:
        return tqdm(iterable, file=stream, disable=disable, **options)
    return tqdm(iterable, file=_PlainLines(stream), disable=disable, ascii=True, ncols=100,
                mininterval=PLAIN_INTERVAL_S, maxinterval=PLAIN_INTERVAL_S, **{**options, "dynamic_ncols": False})
