"""Admission's prompt size: the approximation put in the tokens each backend counts."""

from __future__ import annotations

from accounting.forecast.calibration import PromptCalibration


def test_an_unseen_model_keeps_the_approximation() -> None:
    assert PromptCalibration().tokens("m", 120) == 120


def test_one_prompt_size_seen_shifts_the_approximation_by_the_template() -> None:
    sizes = PromptCalibration()
    sizes.note("m", 10, 36)  # SmolLM2's hidden system prompt: 26 tokens more
    assert sizes.tokens("m", 10) == 36
    assert sizes.tokens("m", 50) == 76
    assert sizes.tokens("other", 10) == 10


def test_sizes_seen_give_the_backends_line_with_a_believable_slope() -> None:
    sizes = PromptCalibration()
    for approx in range(10, 200, 10):
        sizes.note("dense", approx, 26 + 2 * approx)  # a tokenizer twice as dense
        sizes.note("absurd", approx, 7)  # a backend that always says 7
    assert sizes.tokens("dense", 500) == 26 + 2 * 500
    # A flat line is outside the slopes believed: it bends to the lowest one, 0.25.
    assert abs(sizes.tokens("absurd", 1000) - sizes.tokens("absurd", 200) - 200) <= 1


def test_a_changed_template_is_learnt_again() -> None:
    sizes = PromptCalibration()
    for _ in range(50):
        sizes.note("m", 10, 36)
    for _ in range(200):
        sizes.note("m", 10, 20)
    assert sizes.tokens("m", 10) == 20
