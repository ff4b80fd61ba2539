"""The one exception type for user mistakes; cli.py prints it as a single line and exits non-zero."""


class UserError(Exception):
    """Bad input or usage: the message says what is wrong and what to do."""
