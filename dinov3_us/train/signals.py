"""Preemption signals: SIGUSR1 / SIGUSR2 / SIGTERM ask the loop to checkpoint and exit with `REQUEUE_EXIT_CODE`."""

from __future__ import annotations

import logging
import signal

logger = logging.getLogger("dinov3_us")

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; the launcher requeues the job on it
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class PreemptionFlag:
    """Set by a signal handler; the training loop polls it after each step (and agrees on it across ranks)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> PreemptionFlag:
        """Install the handlers (main thread only)."""
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        logger.warning("received %s: checkpointing after this step, then exiting with %d for requeue",
                       signal.Signals(signum).name, REQUEUE_EXIT_CODE)

    @property
    def requested(self) -> bool:
        """True once a preemption signal arrived."""
        return self.signal is not None

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
