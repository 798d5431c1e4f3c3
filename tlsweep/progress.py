"""What a run shows while it works: a live bar in a terminal, one plain line per epoch elsewhere.

A redrawn bar turns into thousands of carriage returns in a log file (SLURM's, or `> log`), so
when the output is not a terminal each epoch prints one line instead.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from tqdm import tqdm


class Progress:
    """Progress of one run: `start()` before the work that precedes the first epoch,
    `epoch()` after each epoch, `close()` at the end."""

    def __init__(self, name: str, epochs: int, stream: TextIO | None = None, live: bool | None = None):
        self.name, self.epochs = name, epochs
        self.live = sys.stderr.isatty() if live is None else live
        # the bar on stderr, like tqdm's; plain lines on stdout, beside the run's result line
        self.stream = stream or (sys.stderr if self.live else sys.stdout)
        self.bar = None

    def start(self) -> None:
        # Decoding the images and the feature pass take tens of seconds on a CPU: say so.
        self._say(f"[tlsweep] {self.name}: preparing data, model and cached features")

    def ready(self, seconds: float, how: str) -> None:
        self._say(f"[tlsweep] {self.name}: ready after {seconds:.1f} s ({how}); training {self.epochs} epochs")
        if self.live:
            self.bar = tqdm(total=self.epochs, desc=self.name, unit="epoch", leave=True, file=self.stream,
                            dynamic_ncols=True)

    def epoch(self, epoch: int, metrics: dict) -> None:
        loss, acc = metrics["train_loss"], metrics["val_acc"]
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.3f} val_acc={acc:.3f}", refresh=False)
            self.bar.update()
        else:
            self._say(f"[tlsweep] {self.name}: epoch {epoch}/{self.epochs} train_loss={loss:.4f} "
                      f"val_loss={metrics['val_loss']:.4f} val_acc={acc:.4f} ({metrics['epoch_seconds']:.1f} s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class PassProgress:
    """A long pass over the data (decoding the images, the frozen prefix's feature pass): one line every
    `period` seconds with what is done, the time so far and an estimate of the rest; nothing for a pass that
    ends within the first period. Safe to call from the decoding threads."""

    def __init__(self, what: str, total: int, period: float = 15.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.period, self.clock = what, total, period, clock
        self.stream = stream
        self.count, self.said = 0, False
        self.start = clock()
        self.next = self.start + period
        self.lock = threading.Lock()

    def step(self, n: int) -> None:
        with self.lock:
            self.count += n
            now = self.clock()
            if now < self.next or not self.count:
                return
            self.next = now + self.period
            spent = now - self.start
            left = spent * (self.total - self.count) / self.count
            self._say(f"[tlsweep] {self.what}: {self.count:,}/{self.total:,} after {_span(spent)}, "
                      f"about {_span(left)} left")

    def done(self) -> None:
        if self.said:
            self._say(f"[tlsweep] {self.what}: done in {_span(self.clock() - self.start)}")

    def _say(self, line: str) -> None:
        self.said = True
        print(line, file=self.stream or sys.stdout, flush=True)


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class PipeSafe:
    """A stdout/stderr that survives its reader going away (`python -m tlsweep -m ... | head`).

    Writing to a closed pipe raises BrokenPipeError; raised inside a job, it failed every job and left
    the sweep's parent RUNNING. Output is only a view of the work: once the pipe is gone, further
    writes go to /dev/null (Python's own advice for SIGPIPE) and the sweep carries on into MLflow.
    """

    def __init__(self, stream: TextIO):
        self._stream = stream

    def _closed(self) -> None:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())  # the interpreter's final flush must not fail either
        except (OSError, ValueError):
            pass
        self._stream = open(os.devnull, "w")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
