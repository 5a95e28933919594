"""The weighted-kNN monitor: hand-checked votes, chunking, ties, metrics, a real backbone, and
the monitor shared over two gloo ranks against one process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from ranks import (
    KNN_BATCH,
    KNN_POOL,
    KNN_QUERIES,
    free_port,
    knn_inputs,
    knn_monitor_of,
    knn_worker,
)

from sdclr.data.banks import as_images
from sdclr.eval.features import EvalSettings, extract_bank_features
from sdclr.eval.knn import (
    _topk_lowest_index_ties,
    knn_evaluate,
    knn_monitor,
    knn_predict,
    rank_shares,
)
from sdclr.models.backbone import create_backbone

GROUPS3 = {"many": [0], "medium": [1], "few": [2]}


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def reference_predict(bank, labels, queries, num_classes, k, temperature):
    """Per-query loop straight from the definition (random data: no ties)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for q in queries:
        sim = bank @ (q / np.linalg.norm(q))
        nn_idx = np.argsort(-sim)[: min(k, len(bank))]
        scores = np.zeros(num_classes)
        for i in nn_idx:
            scores[labels[i]] += np.exp(sim[i] / temperature)
        out.append(int(np.argmax(scores)))
    return np.array(out)


def test_weighting_beats_majority_vote_by_hand():
    # query at 0 deg; one class-0 point at 0 deg (cos = 1), two class-1 points at +-60 deg
    # (cos = 0.5). k = 3 takes all three. T = 0.1: e^10 = 22026 vs 2 e^5 = 297 -> class 0,
    # although a plain majority says class 1. T = 100 makes the weights ~equal: 1.01 vs
    # 2 * 1.005 -> class 1, the majority answer.
    bank = torch.tensor([unit(0), unit(60), unit(-60)]) * torch.tensor([[3.0], [0.5], [2.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([unit(0)]) * 7.0  # norms do not matter: cosine similarity
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.1).tolist() == [0]
    assert knn_predict(bank, labels, query, 2, k=3, temperature=100.0).tolist() == [1]
    # k = 1: only the nearest point votes, whatever the temperature
    assert knn_predict(bank, labels, query, 2, k=1, temperature=100.0).tolist() == [0]


def test_only_the_k_nearest_vote():
    # class 1 has three far points (cos 0.5); class 0 two near ones (cos ~0.98). With k = 2
    # only the near pair votes; with k = 5 and a flat temperature the far majority wins.
    bank = torch.tensor([unit(10), unit(-10), unit(60), unit(-60), unit(61)])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([unit(0)])
    assert knn_predict(bank, labels, query, 2, k=2, temperature=100.0).tolist() == [0]
    assert knn_predict(bank, labels, query, 2, k=5, temperature=100.0).tolist() == [1]


def test_returns_int64_on_the_features_device():
    bank, labels = torch.randn(10, 4), torch.randint(0, 3, (10,))
    pred = knn_predict(bank, labels, torch.randn(6, 4), 3, k=3)
    assert pred.dtype == torch.int64 and pred.shape == (6,) and pred.device == bank.device
    assert knn_predict(bank, labels, torch.randn(0, 4), 3).shape == (0,)


def test_matches_reference_and_chunking_does_not_change_predictions():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 16, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    queries = torch.randn(101, 16, generator=g)
    full = knn_predict(bank, labels, queries, 7, k=20, temperature=0.07, chunk_size=4096)
    ref = reference_predict(bank.numpy(), labels.numpy(), queries.numpy(), 7, 20, 0.07)
    assert full.tolist() == ref.tolist()
    for chunk in (1, 7, 100, 101):
        chunked = knn_predict(bank, labels, queries, 7, k=20, temperature=0.07, chunk_size=chunk)
        assert torch.equal(chunked, full)


def test_k_larger_than_the_bank_uses_every_point():
    bank = torch.tensor([unit(0), unit(60), unit(-60)])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([unit(0)])
    big = knn_predict(bank, labels, query, 2, k=200, temperature=100.0)
    assert big.tolist() == knn_predict(bank, labels, query, 2, k=3, temperature=100.0).tolist()
    assert big.tolist() == [1]
    result = knn_evaluate(bank, labels, query, torch.tensor([1]), 3, GROUPS3, k=200)
    assert result["k"] == 3


def test_small_temperature_does_not_overflow():
    # exp(1 / 1e-4) overflows float32; the vote must still be the nearest neighbour's
    bank = torch.tensor([unit(0), unit(30), unit(-30)])
    labels = torch.tensor([0, 1, 1])
    pred = knn_predict(bank, labels, torch.tensor([unit(1)]), 2, k=3, temperature=1e-4)
    assert pred.tolist() == [0]


def test_ties_are_broken_deterministically():
    # an all-zero query is equally similar (0) to every bank point: the k neighbours must be
    # the lowest bank indices, not whatever topk happens to return
    bank = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 1] + [0] * 48)
    zero = torch.zeros(3, 8)
    assert knn_predict(bank, labels, zero, 2, k=2).tolist() == [1, 1, 1]
    assert knn_predict(bank, labels, zero, 2, k=3).tolist() == [1, 1, 1]
    assert knn_predict(bank, labels, zero, 2, k=5).tolist() == [0, 0, 0]
    # one strictly nearer point, then ties at the k-th place: lowest indices fill the slots
    sim = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1], [0.2, 0.2, 0.2, 0.7, 0.7]])
    vals, idx = _topk_lowest_index_ties(sim, 3, 5 - torch.arange(5, dtype=torch.int32))
    # the set is what is fixed (equal weights may come in either order: the vote is the same)
    assert [sorted(row) for row in idx.tolist()] == [[0, 1, 2], [0, 3, 4]]
    assert torch.equal(vals, sim.gather(1, idx))
    # equal class scores go to the lowest class id
    tie_bank = torch.tensor([unit(30), unit(-30)])
    pred = knn_predict(tie_bank, torch.tensor([1, 0]), torch.tensor([unit(0)]), 2, k=2)
    assert pred.tolist() == [0]


def clusters(n_per_class, num_classes, dim, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_classes] * 10.0
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.1 * torch.randn(len(labels), dim, generator=g), labels


def test_perfect_separation_and_groups_via_summarize():
    bank, bank_y = clusters(20, 3, 8, 0)
    test, test_y = clusters(5, 3, 8, 1)
    result = knn_evaluate(bank, bank_y, test, test_y, 3, GROUPS3, k=10, temperature=0.1)
    assert result["acc"] == 100.0
    assert result["many"] == result["medium"] == result["few"] == 100.0
    assert result["std"] == 0.0
    assert result["per_class"] == [100.0, 100.0, 100.0]
    assert result["groups"] == GROUPS3
    assert result["k"] == 10 and result["temperature"] == 0.1


def test_group_accuracies_follow_the_classes():
    # class 2 ("few") test images sit on class 0's cluster: few = 0, the others 100
    bank, bank_y = clusters(20, 3, 8, 0)
    test, test_y = clusters(4, 3, 8, 1)
    test[test_y == 2] = test[test_y == 0]
    result = knn_evaluate(bank, bank_y, test, test_y, 3, GROUPS3, k=5)
    assert result["many"] == 100.0 and result["medium"] == 100.0 and result["few"] == 0.0
    assert result["acc"] == pytest.approx(200.0 / 3)
    assert result["std"] == pytest.approx(float(np.std([100.0, 100.0, 0.0])))


def test_bad_inputs_are_reported():
    bank, labels = torch.randn(4, 2), torch.tensor([0, 1, 0, 3])
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(bank, labels, torch.randn(2, 2), 3)
    with pytest.raises(ValueError, match="widths differ"):
        knn_predict(bank, torch.tensor([0, 1, 0, 1]), torch.randn(2, 3), 2)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(bank, torch.tensor([0, 1, 0, 1]), torch.randn(2, 2), 2, temperature=0.0)
    with pytest.raises(ValueError, match="empty"):
        knn_predict(torch.randn(0, 2), torch.zeros(0, dtype=torch.long), torch.randn(2, 2), 2)


@pytest.mark.parametrize("training", [True, False])
def test_monitor_on_a_tiny_resnet_restores_the_mode(training):
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", cifar_stem=True, channels=[8, 16, 32, 64])
    backbone.train(training)
    frozen = backbone.bn1  # a submodule with its own mode must keep it too
    frozen.eval()
    before = {name: buf.clone() for name, buf in backbone.named_buffers()}
    g = torch.Generator().manual_seed(0)
    bank_x = torch.randint(0, 256, (24, 3, 16, 16), generator=g, dtype=torch.uint8)
    test_x = torch.randint(0, 256, (9, 3, 16, 16), generator=g, dtype=torch.uint8)
    bank_y, test_y = torch.arange(24) % 3, torch.arange(9) % 3
    result = knn_monitor(
        backbone,
        bank_x,
        bank_y,
        test_x,
        test_y,
        EvalSettings(3, GROUPS3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], batch_size=10),
        k=5,
    )
    assert backbone.training is training and frozen.training is False
    assert all(m.training is training for m in backbone.modules() if m is not frozen)
    # eval mode during extraction: BN running statistics were not updated
    for name, buf in backbone.named_buffers():
        assert torch.equal(buf, before[name]), name
    assert 0.0 <= result["acc"] <= 100.0 and len(result["per_class"]) == 3
    assert result["k"] == 5 and set(result) >= {"many", "medium", "few", "std", "groups"}
    # no_grad is scoped to the call
    assert torch.is_grad_enabled()


def test_rank_shares_are_whole_batches_in_order_with_rank_0_first():
    for n, batch, world in [(37, 8, 2), (5, 8, 2), (1, 4, 3), (64, 8, 4), (65, 8, 4), (0, 8, 2)]:
        shares = rank_shares(n, batch, world)
        assert len(shares) == world
        assert shares[0][0] == 0 and shares[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))  # contiguous, in order
        assert all(s % batch == 0 for s, e in shares if e > s)  # each share starts a batch
        sizes = [-(-(e - s) // batch) for s, e in shares]  # batches per rank
        assert max(sizes) - min(sizes) <= 1 and (n == 0 or shares[0][1] > 0)


def test_the_monitor_shared_over_two_gloo_ranks_equals_one_process():
    """Each rank encodes its share of the pool and of the queries; rank 0's gathered features
    are the single-process ones bit for bit, and every rank returns the single-process
    result."""
    out = mp.Manager().dict()
    mp.spawn(knn_worker, args=(2, free_port(), out), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks
    try:
        inputs = knn_inputs()
        expected = knn_monitor_of(inputs)
        feats = extract_bank_features(
            inputs["backbone"].eval(),
            as_images(inputs["bank_images"]),
            inputs["bank_idx"],
            inputs["settings"].sized_for(as_images(inputs["bank_images"])),
        )
    finally:
        torch.set_num_threads(threads)
    assert out["result0"] == expected and out["result1"] == expected
    assert torch.equal(out["features0"], feats) and out["features1"] is None
    # the work was split: rank 0 three of the five pool batches and the one query batch
    assert out["encoded0"] == 3 * KNN_BATCH + KNN_QUERIES
    assert out["encoded1"] == KNN_POOL - 3 * KNN_BATCH
