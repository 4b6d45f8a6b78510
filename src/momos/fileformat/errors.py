"""The one error a damaged or hostile ``.momos`` file raises."""

from __future__ import annotations


class FormatError(ValueError):
    """The file is not a valid ``.momos`` file: truncated, corrupt, lying or unsupported."""
