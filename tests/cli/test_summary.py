"""What a job prints about itself (sdclr.cli.summary): the pretrained vs random-init verdict,
and the note of a generated split on a dataset whose published split the repository ships."""

from __future__ import annotations

from sdclr.cli.summary import baseline_lines, print_summary
from sdclr.config.compose import compose_config
from sdclr.data.splits import paper_split_note


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


def test_a_generated_split_of_a_published_dataset_is_named_in_the_summary(tmp_path, capsys):
    cfg = compose_config(["split.source=generated"])
    note = paper_split_note("cifar10_lt", "generated (seed 1, generator v1)")
    print_summary(cfg, {"run": {"label": "SDCLR", "split_note": note}}, tmp_path)
    assert "not the paper's" in capsys.readouterr().out
    official = "official files in splits/official/cifar10 (the reference's split 1)"
    assert paper_split_note("cifar10_lt", official) is None
    print_summary(compose_config([]), {"run": {"label": "SDCLR", "split_note": None}}, tmp_path)
    assert "not the paper's" not in capsys.readouterr().out
