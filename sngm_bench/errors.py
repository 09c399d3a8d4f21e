"""The one exception type the command line reports as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input the user can fix (config, data, hardware); the message says what and how."""
