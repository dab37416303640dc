"""User-facing errors: one class, one clear sentence, exit code 2 on the CLI."""


def printable(text: object, limit: int | None = None) -> str:
    """Untrusted text (a file name, an expression, a value read from a file) for a one-line message:
    newlines and other control characters shown escaped (``\\n``, ``\\x1b``), cut to ``limit`` characters.

    Printable text comes back unchanged, and escaping twice changes nothing, so messages can be built
    from parts that were escaped already.
    """
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class StudioError(Exception):
    """A mistake in what the user asked for (bad expression, unknown name, mismatched spaces...).

    The message is meant to be shown as is; no traceback accompanies it.
    """


class SpaceMismatch(StudioError):
    """Two tensors from different spaces were combined."""


class ExpressionError(StudioError):
    """An expression could not be parsed or evaluated; the message points at the position."""

    def __init__(self, message: str, source: str = "", position: int | None = None):
        self.source = source
        self.position = position
        if source and position is not None:
            message = f"{message} at position {position + 1} of '{printable(source)}'"
        super().__init__(message)

    def pointer(self) -> str:
        """Two lines showing the expression and a caret under the position (for UIs)."""
        if not self.source or self.position is None:
            return ""
        return f"{self.source}\n{' ' * self.position}^"
