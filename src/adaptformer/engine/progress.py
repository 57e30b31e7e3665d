"""Progress of a loop: a tqdm bar on a terminal, plain log lines (with ETA) when output goes to a file or pipe.

Only the main process reports; the others get a silent ``Progress`` (``enabled=False``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``1:02:03`` style (hours:minutes:seconds)."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Report ``done/total`` steps with metrics (loss, lr, images/s) and an ETA.

    Args:
        total: steps in this loop.
        desc: what is running, e.g. "epoch 3/100".
        enabled: False for a silent instance (non-main processes).
        log_every: steps between log lines when not on a terminal (the last step is always logged).
        stream: where the bar goes (tqdm's default, stderr); a bar is shown only if it is a terminal.
        initial: steps already done (a resumed epoch).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        log_every: int = 20,
        stream: TextIO | None = None,
        initial: int = 0,
    ) -> None:
        self.total = total
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
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(steps)
        elif self.done % self.log_every == 0 or self.done == self.total:
            text = " ".join(f"{k} {v}" for k, v in shown.items())
            logger.info(
                "%s [%d/%d] %s eta %s", self.desc, self.done, self.total, text, format_duration(self.eta_seconds())
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
