"""The one exception type for bad user input: the CLI prints it as one line and exits with 2."""


class UserError(Exception):
    """Bad input from a user (a malformed equation, an unknown name, a missing file, a bad value).

    The message must say what was wrong and, where it helps, how to fix it.
    """
