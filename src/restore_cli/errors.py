"""The one error every layer may raise for a bad command line: :class:`UsageError` (exit code 2)."""


class UsageError(ValueError):
    """A bad command line: unknown name, incompatible choice, bad value (exit code 2)."""
