"""The resized cache of image files (data.cache_size) is refused before any decoding when it
would not fit the memory free on the training device, with the size and the limit named."""

from __future__ import annotations

import pytest
import torch
from imagetree import folder_args
from tiny import tiny_cfg

from sdclr.data import run_data
from sdclr.errors import ConfigError


def test_a_cache_over_the_limit_is_refused_with_its_size_and_the_limit():
    # ImageNet-LT-exp's pool at 224 px against an 80 GiB GPU with 79 GiB free
    with pytest.raises(ConfigError) as e:
        run_data.check_cache_fits(1_261_620, 224, torch.device("cuda"), free_bytes=79 * 2**30)
    msg = str(e.value)
    assert "data.cache_size" in msg and "1,261,620 images" in msg
    assert "176.9 GiB" in msg and "59.2 GiB" in msg and "GPU memory free" in msg
    assert "data.cache_size=null" in msg
    run_data.check_cache_fits(1000, 224, torch.device("cuda"), free_bytes=79 * 2**30)  # fits


def test_the_host_memory_is_measured_for_a_cpu_run():
    assert run_data.free_memory_bytes(torch.device("cpu")) > 2**20


def test_the_refusal_comes_before_any_decoding(tree, tmp_path, monkeypatch):
    cfg = tiny_cfg(
        *folder_args(tree),
        f"split.dir={tmp_path / 'splits'}",
        "data.image_size=32",
        "data.eval_resize=36",
        "data.cache_size=40",
        f"data.cache_dir={tmp_path / 'cache'}",
        "device=cpu",
    )
    monkeypatch.setattr(run_data, "free_memory_bytes", lambda device: 100_000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(run_data, "decode_resized", no_decoding)
    with pytest.raises(ConfigError, match="40-px cache of"):
        run_data.load_run_data(cfg, torch.device("cpu"), progress=False)
    assert not (tmp_path / "cache").exists()
