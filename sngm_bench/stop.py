"""When a run stops before its last epoch: a signal, or the `max_minutes` deadline.

SIGINT, SIGTERM (Ctrl-C, SLURM preemption) and SIGUSR2 (submitit's timeout signal) become a
flag the training loop reads between steps; a second signal stops at once, as does one before
training (`stop_at_once`); DataLoader workers leave them to the training process. The deadline
is `max_minutes` after the command started (`STARTED_ENV`, set once by the command line and
inherited by every process it launches), so all runs of a sweep share it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from sngm_bench.errors import Interrupted, StoppedAtOnce

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
STARTED_ENV = "SNGM_BENCH_STARTED"  # the command's start, in seconds since the epoch


def mark_command_start() -> None:
    os.environ[STARTED_ENV] = repr(time.time())


def deadline(max_minutes: float | None) -> float | None:
    """The time (as time.time()) by which the run stops, or None."""
    if max_minutes is None:
        return None
    return float(os.environ.get(STARTED_ENV, time.time())) + 60 * max_minutes


def leave_stops_to_the_training_process(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a stop is the training process's, which stops its workers itself.
    A terminal's Ctrl-C and a SIGTERM to every process of a job (SLURM's preemption, `timeout`) reach
    the workers too. torch ends a worker at a SIGTERM: quietly when it comes from the worker's parent
    (how the parent shuts it down, and multiprocessing at exit), as if killed otherwise, and the
    training process, told so at its next line (writing the checkpoint), ended with a traceback and
    no checkpoint. So a worker ignores SIGINT and SIGUSR2 (whatever handlers it was started with),
    and blocks SIGTERM (in the threads it starts too), which a thread of its own takes, ending the
    worker at its parent's only."""
    for sig in SIGNALS:
        if sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_at_the_parents_sigterm, name="sigterm", daemon=True).start()


def _exit_at_the_parents_sigterm() -> None:
    parent = os.getppid()
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


def stop_at_once(signum: int, frame) -> None:
    """A stop signal's handler before training: the command ends as at Ctrl-C, not killed."""
    raise StoppedAtOnce(signum)


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
            raise StoppedAtOnce(signum)
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
        if isinstance(exc, Interrupted) and callable(previous) and previous not in (signal.default_int_handler,
                                                                                    stop_at_once):
            # The handler someone else set still gets its signal, once the checkpoint is written: under
            # hydra-submitit-launcher, SIGUSR2's handler requeues the job, which then continues the run.
            previous(self.signum, None)
