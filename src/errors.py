"""The one kind of error a user can fix: a bad flag, a missing or malformed input file.

Library code raises `UserError` with a message that names the file or flag and the fix; a stage
run through `src.stage.run` prints it as one `error: ...` line and exits 2. Anything else is a
programming error and keeps its traceback. It subclasses ValueError so callers that already
catch ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input (flags, files, data), not with the code."""


class InputMissing(UserError):
    """An input a stage reads does not exist (yet): an earlier step has not made it."""
