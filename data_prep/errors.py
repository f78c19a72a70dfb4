"""The one exception type for problems a user can fix (bad paths, bad flags, mismatched output)."""


class EncodeError(Exception):
    """Printed as `encode.py: error: <message>` with exit status 2; the message names the input and
    what was expected."""
