"""Assets the example pipelines publish; each event's extra carries the ShardSet/ModelRef reference."""

from __future__ import annotations

from airflow.sdk import Asset

TRAFFIC_FEATURES = Asset(name="smart_transportation_cv.features", uri="abai://smart_transportation_cv/features")
TRAFFIC_MODEL = Asset(name="smart_transportation_cv.model", uri="abai://smart_transportation_cv/model")
TRAFFIC_PREDICTIONS = Asset(
    name="smart_transportation_cv.predictions", uri="abai://smart_transportation_cv/predictions"
)
DIGITS_FEATURES = Asset(name="digits_e2e.features", uri="abai://digits_e2e/features")
DIGITS_MODEL = Asset(name="digits_e2e.model", uri="abai://digits_e2e/model")
DIGITS_PREDICTIONS = Asset(name="digits_e2e.predictions", uri="abai://digits_e2e/predictions")
