"""Errors raised by shard references and stores.

They subclass ``ValueError`` so callers that only care about "bad input" can catch one type.
"""

from __future__ import annotations


class InvalidReference(ValueError):
    """A ShardSet/ModelRef (or its manifest) is malformed, tampered with or points somewhere it must not."""


class ChecksumMismatch(InvalidReference):
    """Bytes read back do not hash to the sha256 recorded in the reference or manifest."""


class UnsafePath(InvalidReference):
    """A relative path would escape the dataset root (``..``, absolute, percent-encoded, backslash)."""


class CommitConflict(RuntimeError):
    """Another writer published the same immutable manifest first."""
