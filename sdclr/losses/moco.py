"""MoCo's objective over a queue: logits of a query against its key and the queue, InfoNCE,
and MoCHi's synthetic hard negatives (Kalantidis et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdclr.utils.precision import full_precision, upcast_half


def moco_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    mochi: dict[str, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B, 1 + K (+ s + s')] logits: column 0 is q.k+, then q.queue, then MoCHi's synthetic
    negatives; all divided by the temperature. ``q``, ``k``, ``queue`` are L2-normalised."""
    with full_precision(q.device.type):  # float32 similarities inside a bf16 step
        q, k, queue = upcast_half(q), upcast_half(k), upcast_half(queue)
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ queue.t()
        parts = [pos, neg]
        if mochi:
            parts.append(mochi_logits(q, neg, queue, mochi, generator))
        return torch.cat(parts, 1) / temperature


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive in column 0, averaged over the batch."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def mochi_negatives(
    q: torch.Tensor,
    neg: torch.Tensor,
    queue: torch.Tensor,
    mochi: dict[str, int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MoCHi (Kalantidis et al. 2020) synthetic negatives, [B, s + s', d], no gradient.

    For each query, the ``N`` hardest queue negatives (highest q.n) are kept; ``s`` negatives
    mix two of them, h = a n_i + (1 - a) n_j with a ~ U(0, 1); ``s_prime`` mix the query in,
    h' = b q + (1 - b) n_j with b ~ U(0, 0.5); all L2-normalised."""
    with torch.no_grad():
        b, dev = q.shape[0], q.device
        n = min(int(mochi["N"]), queue.shape[0])
        s, s_prime = int(mochi["s"]), int(mochi["s_prime"])
        hard = neg.detach().topk(n, dim=1).indices  # [B, n] queue rows
        gen_dev = generator.device if generator is not None else dev

        def draw_idx(count: int) -> torch.Tensor:
            i = torch.randint(0, n, (b, count), generator=generator, device=gen_dev).to(dev)
            return queue[hard.gather(1, i)]  # [B, count, d]

        def uniform(count: int, high: float) -> torch.Tensor:
            u = torch.rand(b, count, 1, generator=generator, device=gen_dev).to(dev)
            return u * high

        synth = []
        if s > 0:
            alpha = uniform(s, 1.0)
            synth.append(alpha * draw_idx(s) + (1 - alpha) * draw_idx(s))
        if s_prime > 0:
            beta = uniform(s_prime, 0.5)
            synth.append(beta * q.detach()[:, None, :] + (1 - beta) * draw_idx(s_prime))
        if not synth:
            return q.new_zeros(b, 0, q.shape[1])
        return F.normalize(torch.cat(synth, 1), dim=2)


def mochi_logits(
    q: torch.Tensor,
    neg: torch.Tensor,
    queue: torch.Tensor,
    mochi: dict[str, int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """q . h for the synthetic negatives (gradient to q only), [B, s + s']."""
    h = mochi_negatives(q, neg, queue, mochi, generator)
    return torch.einsum("bd,bsd->bs", q, h)
