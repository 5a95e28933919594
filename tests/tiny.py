"""Tiny configs, models and images shared by the unit tests: configs composed at toy sizes
(tiny_cfg, tiny_model, a kNN / diagnostics monitor, a pretraining run in a temporary
directory); the narrow ResNet-18s and views of the SimCLR / SDCLR tests (small_model,
views, NT-Xent written out) and of the MoCo / BYOL tests (moco_byol_model, moco_byol_views,
InfoNCE written out, a pruned copy, a forward that records its calls)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from sdclr.config.compose import compose_config
from sdclr.config.validate import validate
from sdclr.data.banks import TensorImages
from sdclr.eval.features import EvalSettings
from sdclr.eval.monitor import Diagnostics, KnnMonitor, TrainingMonitor, stratified_sample
from sdclr.models.checkpoint import build_from_spec, model_spec
from sdclr.models.contrastive import build_model
from sdclr.train.loop import Checkpointing, pretrain

# --- configs composed at toy sizes ---------------------------------------------------------

SMALL = [
    "backbone.channels=[8,16,32,64]",
    "pretrain.batch_size=8",
    "pretrain.epochs=2",
    "pretrain.warmup_epochs=1",
    "checkpoint.every=100",
    "method.queue_size=32",
    "method.mochi_n=8",
    "method.mochi_s=4",
    "method.mochi_s_prime=2",
    "method.predictor_hidden=32",
]
GROUPS3 = {"many": [0], "medium": [1], "few": [2]}


def tiny_cfg(*overrides: str):
    cfg = compose_config([*SMALL, *overrides])
    validate(cfg)
    return cfg


def tiny_model(cfg, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_from_spec(model_spec(cfg)).to(dtype)


def images(n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def run_pretrain(cfg, model, method, imgs, log=None, monitor=None, gen_seed=0, **kw):
    gen = torch.Generator().manual_seed(gen_seed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.pt"
        result = pretrain(
            cfg, model, method, imgs, gen, Checkpointing(path), log, False, monitor=monitor, **kw
        )
        return result, load_checkpoint_raw(path)


def load_checkpoint_raw(path: Path):
    return torch.load(path, weights_only=False)


def tiny_monitor(cfg, imgs, labels, knn_every=1, diag_every=1):
    bank = TensorImages(imgs)
    settings = EvalSettings(
        num_classes=3, groups=GROUPS3, mean=list(cfg.data.mean), std=list(cfg.data.std), size=32
    )
    knn = KnnMonitor(knn_every, bank, torch.arange(len(imgs)), labels, bank, labels, settings)
    sample = torch.as_tensor(stratified_sample(labels.numpy(), 3, 4))
    diag = Diagnostics(diag_every, bank, sample, labels, settings)
    return TrainingMonitor(knn, diag)


# --- SimCLR / SDCLR: a narrow ResNet-18 with a depth-3 head, 32 px views ------------------

CHANNELS = [8, 16, 32, 64]


def small_model(dual_bn: bool, depth: int = 3, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_model("resnet18", True, CHANNELS, depth, 16, dual_bn).to(dtype)


def views(n=8, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, 3, 32, 32, generator=g, dtype=dtype) for _ in range(2))


def reference_nt_xent(z1, z2, t):
    """The loss written out anchor by anchor, independent of sdclr.losses.contrastive."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        sims = torch.stack([z[a] @ z[j] / t for j in range(2 * n) if j != a])
        pos_sim = z[a] @ z[pos] / t
        total = total - (pos_sim - torch.logsumexp(sims, 0))
    return total / (2 * n)


# --- MoCo / BYOL: a narrow ResNet-18 with a depth-2 head, 16 px views ---------------------

OUT_DIM = 16
F64 = torch.float64  # the identities are checked in float64 (tests/numerics.py)


def moco_byol_model(dual_bn: bool, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_model("resnet18", True, CHANNELS, 2, OUT_DIM, dual_bn).to(dtype)


def moco_byol_views(n=8, size=16, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, 3, size, size, generator=g, dtype=dtype) for _ in range(2))


def reference_infonce(q, k, queue, t):
    """-log(exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.n_j/t))), averaged, anchor by anchor."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = q[i] @ k[i] / t
        negs = torch.stack([q[i] @ n / t for n in queue])
        total = total - (pos - torch.logsumexp(torch.cat([pos[None], negs]), 0))
    return total / q.shape[0]


def pruned_copy(model, masks):
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            dict(pruned.backbone.named_parameters())[name].mul_(mask)
    return pruned


def recording_forward(model, calls):
    original = model.forward

    def forward(x, branch=0, masks=None):
        calls.append((branch, masks))
        return original(x, branch=branch, masks=masks)

    model.forward = forward
