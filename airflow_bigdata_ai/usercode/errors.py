"""The one error user code raises: a retry cannot fix it (the operators fail the task without retries)."""

from __future__ import annotations


class UserCodeError(Exception):
    """User code cannot be found, imported or called as configured; a retry cannot fix it."""
