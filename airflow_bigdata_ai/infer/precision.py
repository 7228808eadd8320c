"""Which precision runs: the accuracy gate for an explicit bf16/int8, and ``precision="auto"``.

``auto`` builds (or finds in the cache) the int8, bf16 and f32 IRs, measures each one's accuracy and speed on
the same held-out rows in this process, and runs the fastest one whose accuracy is within
``max_accuracy_drop`` points of f32. f32 is the reference and always qualifies, so ``auto`` never fails a gate.

Without labels ``auto`` still chooses: the reference becomes f32's own predictions, and a candidate must agree
with them on at least ``100 - max_accuracy_drop`` percent of the held-out rows. A candidate that disagrees on
a fraction d of the rows can lose at most d of accuracy against f32, whatever the true labels, so the bound
is the same one the labelled gate checks (stricter, since a changed prediction may also have been a wrong one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_bigdata_ai.infer import ir as irmod
from airflow_bigdata_ai.infer.errors import AccuracyGateFailed

if TYPE_CHECKING:
    from airflow_bigdata_ai.infer.runtime import Predictor
    from airflow_bigdata_ai.shards.refs import ModelRef
    from airflow_bigdata_ai.shards.store import ShardStore

AUTO = "auto"
AUTO_ORDER = ("int8", "bf16", "f32")  # tried in this order; the fastest that passes runs
MEASURE_S = 0.3  # each candidate predicts the held-out rows repeatedly for at least this long


@dataclass
class IRBuilder:
    """Builds or fetches one model's IRs (the arguments every :func:`irmod.get_or_build` call shares)."""

    ref: ModelRef
    store: ShardStore
    load_model: Callable[[], Any]
    calibration: Callable[[], np.ndarray]
    source: irmod.CalibrationSource
    code_key: dict[str, Any] | None

    def build(self, precision: str) -> irmod.IRResult:
        return irmod.get_or_build(
            self.ref, self.store, precision, self.load_model, self.calibration, self.source, self.code_key
        )


@dataclass
class Selection:
    """The IR that runs, at which precision, and the gate record that goes into the summary."""

    precision: str
    built: irmod.IRResult
    gate: dict[str, Any]


def accuracy_of(predictor: Predictor, images: np.ndarray, labels: np.ndarray) -> float:
    mask = labels >= 0
    if not mask.any():
        return float("nan")
    return float((predictor.predict(images[mask]).argmax(axis=1) == labels[mask]).mean())


def images_per_s(predictor: Predictor, images: np.ndarray) -> float:
    """Throughput of repeated predictions of ``images`` after one warm-up call (at least MEASURE_S long)."""
    predictor.predict(images)
    count, started = 0, time.perf_counter()
    while True:
        predictor.predict(images)
        count += len(images)
        elapsed = time.perf_counter() - started
        if elapsed >= MEASURE_S:
            return count / elapsed


def gate_explicit(
    builder: IRBuilder,
    precision: str,
    shape: tuple[int, ...],
    holdout: np.ndarray,
    labels: np.ndarray | None,
    max_drop: float,
    on_drop: str,
    say: Callable[[str], None],
) -> Selection:
    """An explicit precision: bf16/int8 are checked against f32 on labelled held-out rows (when labelled)."""
    from airflow_bigdata_ai.infer.runtime import Predictor

    built = builder.build(precision)
    say(f"OpenVINO IR for {precision}: {'cache hit' if built.cache_hit else 'built'} in {built.seconds:.1f} s")
    if precision == "f32":
        return Selection("f32", built, {"checked": False})
    if labels is None or not (labels >= 0).any():
        return Selection(precision, built, {"checked": False, "reason": "no labels in the input"})
    f32_built = builder.build("f32")
    f32_acc = accuracy_of(Predictor.from_ir(f32_built.handle, shape, "f32"), holdout, labels)
    acc = accuracy_of(Predictor.from_ir(built.handle, shape, precision), holdout, labels)
    drop = (f32_acc - acc) * 100
    gate: dict[str, Any] = {
        "checked": True,
        "samples": int((labels >= 0).sum()),
        "f32_accuracy": f32_acc,
        f"{precision}_accuracy": acc,
        "drop_points": drop,
        "max_accuracy_drop": max_drop,
        "passed": drop <= max_drop,
    }
    say(
        f"Accuracy gate: {precision} {acc:.2%} vs f32 {f32_acc:.2%} on {gate['samples']} held-out rows "
        f"(drop {drop:.2f} points, allowed {max_drop:g})"
    )
    if gate["passed"]:
        return Selection(precision, built, gate)
    if on_drop == "fail":
        raise AccuracyGateFailed(precision, acc, f32_acc, max_drop, gate["samples"])
    say(f"Falling back to f32: {precision} lost {drop:.2f} points")
    return Selection("f32", f32_built, {**gate, "fallback_from": built.summary()})


def choose_auto(
    builder: IRBuilder,
    shape: tuple[int, ...],
    holdout: np.ndarray,
    labels: np.ndarray | None,
    max_drop: float,
    threads: int | None,
    say: Callable[[str], None],
) -> Selection:
    """Try int8, bf16 and f32 on the same held-out rows; run the fastest within ``max_drop`` of f32."""
    from airflow_bigdata_ai.infer.runtime import Predictor

    labelled = labels is not None and bool((labels >= 0).any())
    built = {p: builder.build(p) for p in AUTO_ORDER}
    predictors = {p: Predictor.from_ir(built[p].handle, shape, p, threads=threads) for p in AUTO_ORDER}
    if labelled:
        assert labels is not None
        rows, reference, basis = holdout[labels >= 0], labels[labels >= 0], "labels"
    else:  # f32's own predictions are the reference: see the module docstring
        rows, basis = holdout, "agreement with f32's predictions (the input has no labels)"
        reference = predictors["f32"].predict(rows).argmax(axis=1)
    tried: list[dict[str, Any]] = []
    for precision in AUTO_ORDER:
        accuracy = float((predictors[precision].predict(rows).argmax(axis=1) == reference).mean())
        speed = images_per_s(predictors[precision], rows)
        runtime = predictors[precision].runtime_precision
        tried.append({"precision": precision, "accuracy": accuracy, "images_per_s": speed, "runtime": runtime})
    f32_accuracy = tried[-1]["accuracy"]
    for entry in tried:
        entry["drop_points"] = (f32_accuracy - entry["accuracy"]) * 100
        entry["passed"] = entry["drop_points"] <= max_drop
        entry["ir"] = built[entry["precision"]].summary()
    chosen = max((e for e in tried if e["passed"]), key=lambda e: e["images_per_s"])
    for entry in tried:
        say(
            f"precision auto: {entry['precision']} (OpenVINO {entry['runtime']}) "
            f"{'accuracy' if labelled else 'agreement with f32'} {entry['accuracy']:.2%} "
            f"(drop {entry['drop_points']:.2f} points, allowed {max_drop:g}), {entry['images_per_s']:.0f} images/s"
            f"{'' if entry['passed'] else ': fails the gate'}"
        )
    say(f"precision auto: running {chosen['precision']}, the fastest that passes, on {len(rows)} held-out rows")
    gate = {
        "checked": True,
        "mode": AUTO,
        "basis": basis,
        "samples": len(rows),
        "max_accuracy_drop": max_drop,
        "tried": tried,
        "chosen": chosen["precision"],
        "passed": True,
        **{f"{e['precision']}_{'accuracy' if labelled else 'agreement'}": e["accuracy"] for e in tried},
    }
    return Selection(chosen["precision"], built[chosen["precision"]], gate)
