"""The one error type for problems a user can fix: the CLI shows its message as one red line, exit code 1."""


class ToolkitError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with a message saying what was kept and how to continue."""
