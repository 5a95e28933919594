"""precision=auto on a GPU without bfloat16 falls back to float32 with one warning, bf16 asked
for there is refused, and outputs kept across compiled calls are copies."""

from __future__ import annotations

import warnings

import pytest
import torch

from sdclr.errors import ConfigError
from sdclr.utils import precision

CUDA = torch.device("cuda")


@pytest.fixture()
def old_gpu(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")


def test_auto_is_bf16_on_a_gpu_with_bfloat16_and_fp32_on_the_cpu(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    assert precision.resolve_precision("auto", CUDA) == "bf16"
    assert precision.resolve_precision("fp32", CUDA) == "fp32"
    assert precision.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_auto_falls_back_to_fp32_with_one_warning_on_an_older_gpu(old_gpu):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_precision("auto", CUDA) == "fp32"
    assert len(caught) == 1 and "Tesla V100" in str(caught[0].message)
    assert "float32" in str(caught[0].message)
    assert precision.resolve_precision("fp32", CUDA) == "fp32"


def test_bf16_asked_for_on_an_older_gpu_is_refused(old_gpu):
    with pytest.raises(ConfigError, match="config key 'precision'.*Tesla V100.*precision=fp32"):
        precision.resolve_precision("bf16", CUDA)


def test_an_upcast_output_is_the_callers_own():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        out = torch.arange(6, dtype=dtype)
        mine = precision.owned_upcast(out)
        assert mine.data_ptr() != out.data_ptr() and torch.equal(mine, out.to(mine.dtype))
        assert mine.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
