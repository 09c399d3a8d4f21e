"""Exceptions the command line reports as a single line instead of a traceback."""

import signal
from pathlib import Path

DEADLINE_EXIT_CODE = 124  # as timeout(1): the time allowed ran out


class UserError(Exception):
    """Bad input the user can fix (config, data, hardware); the message says what and how."""


class LostPeer(UserError):
    """Another process of this run ended first (killed, crashed, or with an error of its own), and
    this one's next collective failed: a consequence, never the cause, which torchrun's report must
    not name as the first failure."""

    MESSAGE = ("another process of this run ended first; its own error says why (torchrun's report names it "
               "as the first observed failure)")

    def __init__(self, then: str = ""):
        super().__init__(self.MESSAGE + then)


class Interrupted(Exception):
    """The run was stopped by a signal, or by its `max_minutes` deadline (`signum` None), after
    writing its checkpoint; rerunning continues it."""

    def __init__(self, signum: int | None, run_dir: Path):
        self.signum = signum
        self.cause = signal.Signals(signum).name if signum else "max_minutes"
        self.exit_code = 128 + signum if signum else DEADLINE_EXIT_CODE
        what = f"stopped by {self.cause}" if signum else "stopped at the max_minutes deadline"
        super().__init__(f"{what}; checkpoint saved in {run_dir}, run the same command again to continue")


class StoppedAtOnce(KeyboardInterrupt):
    """A stop signal that ends the command at once, as Ctrl-C's KeyboardInterrupt does, but with its
    own exit code (128 + `signum`): a second one while the run trains, or one before it trains."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)
