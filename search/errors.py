"""The error every stage raises for bad input."""


class UsageError(ValueError):
    """Bad input: reported as one line naming the fix, exit code 2."""
