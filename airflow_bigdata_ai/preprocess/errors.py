"""Reason codes for quarantined records, and the two ways a preprocessing run fails.

The split matters to Airflow: bad *data* is counted and quarantined (and fails the task only above a
threshold, where a retry would not help), while *infrastructure* errors raise so that Airflow retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Reason codes (stable strings: they appear in manifests, stats and failure messages).
ZERO_BYTES = "zero_bytes"
TRUNCATED = "truncated"
UNDECODABLE = "undecodable"
WRONG_CHANNELS = "wrong_channels"
DECOMPRESSION_BOMB = "decompression_bomb"
BAD_LABEL = "bad_label"
MISSING_FILE = "missing_file"
TRANSFORM_ERROR = "transform_error"
BAD_OUTPUT = "bad_output"

REASONS = (
    ZERO_BYTES,
    TRUNCATED,
    UNDECODABLE,
    WRONG_CHANNELS,
    DECOMPRESSION_BOMB,
    BAD_LABEL,
    TRANSFORM_ERROR,
    BAD_OUTPUT,
)


class Quarantined(Exception):
    """Raised inside record processing for one bad record; never escapes a partition."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:300]


@dataclass(frozen=True)
class QuarantineRecord:
    """One quarantined input: where it is, why, and the decoder's message (truncated)."""

    record_id: str
    uri: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "uri": self.uri, "reason": self.reason, "detail": self.detail}


class SourceError(RuntimeError):
    """The source cannot be read as a whole (a missing or empty prefix).

    Never quarantined. The prefix may yet appear (an upstream writer, a store outage), so Airflow retries.
    """


class SourceLayoutError(SourceError):
    """The source is laid out so that no run can succeed: no file with an image extension, a labels file
    that is missing, without a ``path,label`` header, empty, listing a path twice, or in another store.

    Raised before any Spark job starts where it can be (labels files are read on the driver); a retry
    cannot fix it, so the operator fails without retries.
    """


class QueryError(SourceLayoutError):
    """A table or SQL source Spark cannot run (syntax, a missing table or column): Spark's message, not
    retried (the same query fails the same way)."""


class SettingsError(ValueError):
    """``preprocess()`` was given settings that cannot work (bad transform steps, output spec, guards,
    numbers out of range, an unparsable URI). Raised on the driver before any Spark job; not retried."""


class TooManyBadRecords(RuntimeError):
    """More than ``max_bad_fraction`` of the inputs were quarantined. Retrying will not help."""

    def __init__(self, message: str, counts: dict[str, Any], report_uri: str | None) -> None:
        super().__init__(message)
        self.counts = counts
        self.report_uri = report_uri


class InconsistentOutput(RuntimeError):
    """The transform produced different columns, shapes or dtypes in different shards (a code bug)."""
