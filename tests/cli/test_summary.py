"""What a job prints about itself (sdclr.cli.summary): the pretrained vs random-init verdict."""

from __future__ import annotations

from sdclr.cli.summary import baseline_lines


def _metrics(ours: float, base: float, n: int = 1000) -> dict:
    return {
        "linear": {"acc": ours, "test_images": n},
        "linear_random_init": {"acc": base, "test_images": n},
    }


def test_the_verdict_needs_two_standard_errors():
    # at 1000 test images around 50%, one standard error of the difference is about 2.2
    (helps,) = baseline_lines(_metrics(60.0, 50.0))
    assert helps.startswith("Full-shot (linear probe): pretrained 60.00 vs random init 50.00")
    assert "+10.00 ± 2.21 points" in helps and helps.endswith("pretraining helps")
    (unclear,) = baseline_lines(_metrics(52.0, 50.0))
    assert unclear.endswith("no clear difference from random init (within 2 standard errors)")
    (worse,) = baseline_lines(_metrics(40.0, 50.0))
    assert worse.endswith("pretraining is WORSE than random init")
    assert baseline_lines({"linear": {"acc": 50.0}}) == []  # no baseline ran
