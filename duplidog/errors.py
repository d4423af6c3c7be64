"""The one exception users see.

Every problem a user can fix (a missing frame, a bad config value, a corrupt file) is raised as a
``DuplidogError`` whose message is one line naming the file or frame and what is wrong. The command
line prints it without a traceback; anything else is a bug and keeps its traceback.
"""


class DuplidogError(Exception):
    """A user-facing error: one line, naming the file or frame and what is wrong."""
