"""The one exception type for problems a user can fix (bad config, missing file, corrupt checkpoint).

The CLI prints its message without a traceback and exits with status 2; anything else is a bug.
"""


class RckdError(Exception):
    """An actionable error: the message says what is wrong and how to fix it."""
