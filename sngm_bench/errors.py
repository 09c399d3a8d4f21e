"""Exceptions the command line reports as a single line instead of a traceback."""

import signal
from pathlib import Path


class UserError(Exception):
    """Bad input the user can fix (config, data, hardware); the message says what and how."""


class Interrupted(Exception):
    """The run was stopped by a signal after writing its checkpoint; rerunning continues it."""

    def __init__(self, signum: int, run_dir: Path):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint saved in {run_dir}, "
                         "run the same command again to continue")
