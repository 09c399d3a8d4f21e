"""When a run stops before its last epoch: a signal, or the `max_minutes` deadline.

SIGINT, SIGTERM (Ctrl-C, SLURM preemption) and SIGUSR2 (submitit's timeout signal) become a
flag the training loop reads between steps; a second signal stops at once. The deadline is
`max_minutes` after the command started (`STARTED_ENV`, set once by the command line and
inherited by every process it launches), so all runs of a sweep share it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from sngm_bench.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
STARTED_ENV = "SNGM_BENCH_STARTED"  # the command's start, in seconds since the epoch


def mark_command_start() -> None:
    os.environ[STARTED_ENV] = repr(time.time())


def deadline(max_minutes: float | None) -> float | None:
    """The time (as time.time()) by which the run stops, or None."""
    if max_minutes is None:
        return None
    return float(os.environ.get(STARTED_ENV, time.time())) + 60 * max_minutes


def leave_sigterm_to_the_training_process(worker_id: int) -> None:
    """DataLoader `worker_init_fn`. torch ends a worker at a SIGTERM: quietly when it comes from the
    worker's parent (how the parent shuts it down), as if killed otherwise. A SIGTERM to every process
    of a job (SLURM's preemption, `timeout`) then killed the workers, and the training process, told so
    at its next line (writing the checkpoint), ended with a traceback and no checkpoint. Here the worker
    still ends at its parent's SIGTERM and leaves any other to the training process, which stops its
    workers itself: SIGTERM is blocked in the worker (and in the threads it starts) and taken by a thread
    of its own."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_at_the_parents_sigterm, name="sigterm", daemon=True).start()


def _exit_at_the_parents_sigterm() -> None:
    parent = os.getppid()
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


class StopRequest:
    """Whether the run should stop at the next step boundary, and why."""

    def __init__(self, deadline: float | None = None):
        self.signum: int | None = None
        self.deadline = deadline
        self._previous = {}

    @property
    def requested(self) -> bool:
        """A host-side check, cheap enough for every step."""
        return self.signum is not None or (self.deadline is not None and time.time() >= self.deadline)

    def reason(self) -> int | None:
        """The signal, or None for the deadline (SIGTERM when only another process was signalled)."""
        if self.signum is not None:
            return self.signum
        return None if self.deadline is not None and time.time() >= self.deadline else signal.SIGTERM

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        previous = self._previous.get(self.signum)
        if isinstance(exc, Interrupted) and callable(previous) and previous is not signal.default_int_handler:
            # The handler we replaced still gets its signal, once the checkpoint is written: under
            # hydra-submitit-launcher, SIGUSR2's handler requeues the job, which then continues the run.
            previous(self.signum, None)
