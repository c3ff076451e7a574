"""The project's own error type for bad input.

``InputError`` is raised for a bad argument, file, folder, sample or configuration, with a message
that names the offending thing and the fix. It subclasses ``ValueError``, so ``except ValueError``
keeps working. The command line prints an ``InputError`` (and a file-system ``OSError``) as one
line with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "NonFiniteError"]


class InputError(ValueError):
    """Bad input, described in one line: what is wrong, where, and how to fix it."""


class NonFiniteError(InputError):
    """A result that would be made of NaN or inf (a NaN weight, a float16 overflow, a hook that
    writes NaN), with the sample, the forward and where the values first stop being finite. An
    :class:`InputError`: the checkpoint or the hooks are at fault, and the command line stops
    with one line (exit code 2) before such a result is written."""
