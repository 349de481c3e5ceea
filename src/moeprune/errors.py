"""The one exception type that user mistakes raise; the CLI prints it as a single line."""


class MoepruneError(Exception):
    """A problem the user can fix: the message names the problem and the fix, on one line."""
