"""Source data and sizing for the example DAGs (and the demo): generated on the machine, no downloads.

``AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE`` picks the size: ``full`` (the demo) or ``tiny`` (tests that run the
example DAGs through the real scheduler several times; f32 there, because an accuracy gate measured on a
few dozen held-out rows is too coarse to be a stable test). Read at DAG-parse time, so it is cheap.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from airflow_bigdata_ai.cluster.config import state_root

TRAFFIC_CLASSES = ("bicycle", "bus", "car", "pedestrian", "truck")


@dataclass(frozen=True)
class ExampleScale:
    traffic_images: int
    digits_limit: int | None
    epochs: int
    traffic_size: int
    precision: str


SCALES = {
    "full": ExampleScale(traffic_images=1500, digits_limit=None, epochs=6, traffic_size=48, precision="int8"),
    "tiny": ExampleScale(traffic_images=150, digits_limit=300, epochs=2, traffic_size=32, precision="f32"),
}


def example_scale() -> ExampleScale:
    name = os.environ.get("AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE", "full")
    if name not in SCALES:
        raise ValueError(f"AIRFLOW_BIGDATA_AI_EXAMPLE_SCALE must be one of {sorted(SCALES)}, got {name!r}")
    return SCALES[name]


def sources_root() -> str:
    return os.environ.get("AIRFLOW_BIGDATA_AI_SOURCES", os.path.join(state_root(), "sources"))


def day_seed(ds: str) -> int:
    """A stable seed per logical date: each day's camera crops differ, a rerun regenerates the same ones."""
    return int(hashlib.sha256(ds.encode()).hexdigest()[:8], 16)


def prepare_traffic_source(ds: str, count: int) -> str:
    """Write (once) the day's camera crops and return the folder; labels come from the sub-folders."""
    from airflow_bigdata_ai.examples.datasets.traffic import write_traffic_images

    folder = os.path.join(sources_root(), "traffic", f"ds={ds}")
    write_traffic_images(folder, count=count, seed=day_seed(ds))
    return folder


def prepare_digits_source(limit: int | None) -> str:
    """Write (once) scikit-learn's handwritten digits as PNG files in class sub-folders."""
    from airflow_bigdata_ai.examples.datasets.digits import write_digits

    folder = os.path.join(sources_root(), "digits", f"png-{limit or 'all'}")
    marker = os.path.join(folder, "_COMPLETE")
    if not os.path.exists(marker):
        write_digits(folder, fmt="png", limit=limit)
        with open(marker, "w") as handle:
            handle.write("ok\n")
    return folder
