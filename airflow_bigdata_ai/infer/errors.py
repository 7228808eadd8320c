"""Inference errors that name what went wrong in terms the DAG author can act on."""

from __future__ import annotations


class InferenceError(RuntimeError):
    """Base class for inference failures."""


class InputShapeRejected(InferenceError, ValueError):
    """The declared input shape is absurd or disagrees with the data: refused before any compile."""


class ModelLoadFailed(InferenceError):
    """The verified weights do not fit the model the factory builds (keys or shapes differ)."""


class AccuracyGateFailed(InferenceError):
    """A reduced-precision model lost more accuracy than allowed against f32 on the held-out sample."""

    def __init__(self, precision: str, accuracy: float, f32_accuracy: float, max_drop: float, samples: int) -> None:
        self.precision = precision
        self.accuracy = accuracy
        self.f32_accuracy = f32_accuracy
        self.max_drop = max_drop
        self.samples = samples
        drop = (f32_accuracy - accuracy) * 100
        super().__init__(
            f"accuracy gate failed: {precision} accuracy {accuracy:.2%} vs f32 {f32_accuracy:.2%} on {samples} "
            f"held-out rows (drop {drop:.2f} points > allowed {max_drop:g}); rerun with precision='f32' or "
            "on_accuracy_drop='fallback'"
        )
