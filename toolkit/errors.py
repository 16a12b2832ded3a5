"""The one error type for problems a user can fix (the CLI shows its message as one red line, exit code 1), and
the first line of a library's exception, which is what such a message quotes."""


class ToolkitError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class FormatRefused(ToolkitError):
    """One export format cannot carry this model (an operator its runtime lacks): that format is skipped, said in one
    line naming the operator and the layer, and the other formats still export."""

    def __init__(self, message: str, operator: str = "", tensor: str = ""):
        super().__init__(message)
        self.operator, self.tensor = operator, tensor


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with a message saying what was kept and how to continue."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """A library exception as one short line: its first non-empty line, else its type's name."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]
