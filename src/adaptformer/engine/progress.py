"""Progress of a loop: a tqdm bar on a terminal, plain log lines (with ETA) when output goes to a file or pipe.

Training epochs also show the whole run's ETA (:class:`RunEta`); evaluations show their count and rate. Only the main
process reports; the others get a silent ``Progress`` (``enabled=False``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``1:02:03`` style (hours:minutes:seconds); ``?`` when not known (NaN)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunEta:
    """The whole run's remaining time: the wall time per optimizer step so far in this process (validation and
    saving included) times the steps left.

    Args:
        total_steps: optimizer steps of the whole run.
        done_steps: steps already done when this process started (a resumed run).
    """

    def __init__(self, total_steps: int, done_steps: int = 0) -> None:
        self.total_steps = total_steps
        self._start_done = done_steps
        self._start = time.perf_counter()

    def seconds_left(self, done_steps: int) -> float:
        """Remaining seconds once ``done_steps`` steps of the run are done (NaN before the first one)."""
        ran = done_steps - self._start_done
        if ran <= 0:
            return float("nan")
        return (time.perf_counter() - self._start) / ran * (self.total_steps - done_steps)


class Progress:
    """Report ``done/total`` steps with metrics (loss, lr, images/s) and an ETA; a context manager that closes it.

    Args:
        total: steps in this loop.
        desc: what is running, e.g. "epoch 3/100".
        enabled: False for a silent instance (non-main processes).
        log_every: steps between log lines when not on a terminal (the last step is always logged).
        stream: where the bar goes (tqdm's default, stderr); a bar is shown only if it is a terminal.
        initial: steps already done (a resumed epoch).
        run_eta: also show the whole run's ETA; ``run_offset`` is the run's step count at this loop's step 0.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        log_every: int = 20,
        stream: TextIO | None = None,
        initial: int = 0,
        run_eta: RunEta | None = None,
        run_offset: int = 0,
    ) -> None:
        self.total = total
        self.run_eta = run_eta
        self.run_offset = run_offset
        self.desc = desc
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.done = initial
        self._start_done = initial
        self._start = time.perf_counter()
        stream = stream if stream is not None else sys.stderr
        self._bar = None
        if enabled and stream.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=desc, file=stream, dynamic_ncols=True, leave=False)

    def eta_seconds(self) -> float:
        """Remaining time at the rate of the steps run so far in this process."""
        ran = self.done - self._start_done
        if ran <= 0:
            return float("nan")
        return (time.perf_counter() - self._start) / ran * (self.total - self.done)

    def update(self, steps: int = 1, **metrics: Any) -> None:
        """Advance by ``steps`` and show ``metrics`` (floats are shortened)."""
        if not self.enabled:
            return
        self.done += steps
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics.items()}
        run_left = self.run_eta.seconds_left(self.run_offset + self.done) if self.run_eta is not None else None
        if self._bar is not None:
            if run_left is not None:
                shown["run eta"] = format_duration(run_left)
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(steps)
        elif self.done % self.log_every == 0 or self.done == self.total:
            text = " ".join(f"{k} {v}" for k, v in shown.items())
            eta = format_duration(self.eta_seconds())
            if run_left is not None:
                eta += f" (run {format_duration(run_left)})"
            logger.info("%s [%d/%d] %s eta %s", self.desc, self.done, self.total, text, eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
