"""Stopping a stage on a signal, without torch (every stage's start, ``stages.common.run``,
installs the handlers; a stage that trains nothing never imports torch).

SIGINT (Ctrl-C) and SIGTERM (what schedulers and torchrun send before killing) stop a stage
cleanly: inside a training loop (``graceful``) the first signal lets the current step finish,
then ``train.fit`` writes a resume checkpoint and raises ``Stopped``; elsewhere, or at a second
SIGINT, ``Stopped`` is raised at once (a repeated SIGTERM is the same request: ignored). Either
way ``finally`` blocks run, so temporary files are removed and nothing half-written is left; the
stage exits with 128 + the signal's number. Under torchrun, which kills its workers 30 s after
forwarding a signal (--shutdown-timeout), a step plus the checkpoint must fit in that time.
``pipeline.distributed.stop_requested`` gives every rank the same answer.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

log = logging.getLogger("pipeline.distributed")


class Stopped(KeyboardInterrupt):
    """The stage was stopped by ``signum``; ``str()`` says where and how to resume."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


_stop_signal: int | None = None  # the signal that asked the training loop to stop
_graceful = 0  # > 0 while a training loop checks stop_requested() after each step


def _on_signal(signum: int, frame) -> None:
    global _stop_signal
    if _graceful:
        if _stop_signal is None:
            _stop_signal = signum
            log.warning("%s: stopping after this step with a resume checkpoint (Ctrl-C again to "
                        "stop at once)", signal.Signals(signum).name)
            return
        if signum == signal.SIGTERM:  # the same request again (a scheduler and torchrun both
            return  # forward it): keep stopping cleanly
    raise Stopped(signum)


def install_signal_handlers() -> None:
    """Route SIGINT and SIGTERM to ``_on_signal`` (called by ``stages.common.run``)."""
    global _stop_signal
    _stop_signal = None
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """While inside, a first SIGINT/SIGTERM only asks ``stop_requested`` to say yes."""
    global _graceful
    _graceful += 1
    try:
        yield
    finally:
        _graceful -= 1


def requested() -> int | None:
    """The signal this process was asked to stop by, or None."""
    return _stop_signal
