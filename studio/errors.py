"""User-facing errors: one class, one clear sentence, exit code 2 on the CLI."""


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
            message = f"{message} at position {position + 1} of '{source}'"
        super().__init__(message)

    def pointer(self) -> str:
        """Two lines showing the expression and a caret under the position (for UIs)."""
        if not self.source or self.position is None:
            return ""
        return f"{self.source}\n{' ' * self.position}^"
