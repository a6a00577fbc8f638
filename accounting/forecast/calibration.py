"""A prompt's size in the backend's tokens, from its approximation, learnt per model.

The forecast's fits are in the tokens the backend reports, which include what its
chat template adds (SmolLM2's hidden system prompt makes a 10-token approximation
36 tokens). At admission there is no time to ask the backend's tokenizer, so each
model's counts are kept as a line in the approximation, ``tokens ≈ a + b * approx``,
fitted on the requests it served (their usage) and the forecasts whose prompt its
tokenizer counted. The sums decay, so a changed template is learnt again; until a
model has shown two different prompt sizes the line is the approximation shifted by
the mean gap.
"""

from __future__ import annotations

DECAY = 0.98
"""Each new count weighs as much as the last ~50 together."""
MAX_MODELS = 1024
"""Models remembered at most (requested names are the clients')."""
SLOPE_RANGE = (0.25, 4.0)
"""The slopes believed: a tokenizer 4x denser or sparser than 4 characters a token."""


class PromptCalibration:
    """Per model, the backend's prompt tokens as a line in the approximation."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}
        """Model → decayed n, sum x, sum y, sum x*x, sum x*y (x: approximation, y: count)."""

    def note(self, model: str, approx: int, counted: int) -> None:
        """The backend counted ``counted`` tokens where the approximation said ``approx``."""
        sums = self._sums.get(model)
        if sums is None:
            if len(self._sums) >= MAX_MODELS:
                return
            sums = self._sums[model] = [0.0] * 5
        x, y = float(approx), float(counted)
        for i, value in enumerate((1.0, x, y, x * x, x * y)):
            sums[i] = sums[i] * DECAY + value

    def tokens(self, model: str, approx: int) -> int:
        """``approx`` in ``model``'s backend tokens (``approx`` itself for a model not seen)."""
        sums = self._sums.get(model)
        if sums is None:
            return approx
        n, sx, sy, sxx, sxy = sums
        mean_x, mean_y = sx / n, sy / n
        var_x = sxx / n - mean_x * mean_x
        slope = 1.0
        if var_x > 1e-6 * max(1.0, mean_x * mean_x):
            low, high = SLOPE_RANGE
            slope = min(high, max(low, (sxy / n - mean_x * mean_y) / var_x))
        return max(0, round(mean_y + slope * (approx - mean_x)))
