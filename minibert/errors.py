"""The one exception type for mistakes a user can make (bad path, bad file, bad config, bad data).

Its message is one sentence that says what is wrong and what to do. The command lines print it alone on stderr
and exit with status 1; any other exception is a bug in minibert and keeps its traceback.
"""


class MinibertError(Exception):
    """A user-facing error: the message is meant to be read, not debugged."""
