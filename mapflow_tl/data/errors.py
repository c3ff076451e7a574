"""The one exception type of the data layer."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["DataError"]


class DataError(InputError):
    """A video or annotation file that cannot be used, with the file and field that are wrong.

    An :class:`~mapflow_tl.errors.InputError`, so the command line reports it as a user error in
    one line (exit code 2).
    ``path`` is the offending file (or folder), ``field`` the annotation field or ``None`` when the
    whole file is at fault.
    """

    def __init__(self, message: str, *, path: object = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.field = field
