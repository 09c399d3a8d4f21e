"""Exceptions the command line reports as a single line instead of a traceback."""

import signal
from pathlib import Path

DEADLINE_EXIT_CODE = 124  # as timeout(1): the time allowed ran out


class UserError(Exception):
    """Bad input the user can fix (config, data, hardware); the message says what and how."""


class Interrupted(Exception):
    """The run was stopped by a signal, or by its `max_minutes` deadline (`signum` None), after
    writing its checkpoint; rerunning continues it."""

    def __init__(self, signum: int | None, run_dir: Path):
        self.signum = signum
        self.cause = signal.Signals(signum).name if signum else "max_minutes"
        self.exit_code = 128 + signum if signum else DEADLINE_EXIT_CODE
        what = f"stopped by {self.cause}" if signum else "stopped at the max_minutes deadline"
        super().__init__(f"{what}; checkpoint saved in {run_dir}, run the same command again to continue")
