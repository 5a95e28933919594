"""Features are the caller's own: a backbone whose output lives in one buffer that its next
call overwrites (what a compiled model's output is under CUDA graphs) still gives every
chunk's own features."""

from __future__ import annotations

import torch
from torch import nn

from sdclr.data.banks import TensorImages
from sdclr.eval.features import EvalSettings, extract_bank_features


class StaticOutput(nn.Module):
    """Mean colour per image, written into the same output buffer at every call."""

    def __init__(self, batch: int):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("out", torch.zeros(batch, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.out[:n] = x.mean(dim=(2, 3))
        return self.out[:n]


def test_each_chunk_keeps_its_own_features():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=g)
    settings = EvalSettings(3, {}, [0.5] * 3, [0.25] * 3, size=8, batch_size=4)
    idx = torch.arange(10)
    static = extract_bank_features(StaticOutput(4), TensorImages(images), idx, settings)
    fresh = torch.stack([settings.view(images[i : i + 1]).mean(dim=(2, 3))[0] for i in range(10)])
    assert torch.allclose(static, fresh, atol=1e-6)
