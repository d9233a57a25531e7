"""Reference tests of the maths: JPQ scoring, losses, negatives, allocation at a million items."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from recjpq_cli.config import build_config
from recjpq_cli.jpq.embedding import FullEmbedding, JPQEmbedding
from recjpq_cli.models import losses
from recjpq_cli.models.registry import build_model, model_args_from_config
from recjpq_cli.negatives import uniform_negatives


def _jpq(n_items: int = 300, m: int = 4, ksub: int = 16, d: int = 32, seed: int = 0) -> JPQEmbedding:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, ksub, (n_items + 1, m), generator=g, dtype=torch.uint8)
    codes[0] = 0
    torch.manual_seed(seed)
    return JPQEmbedding(codes=codes, ksub=ksub, d=d)


def test_jpq_embedding_is_concatenation_of_centroids() -> None:
    e = _jpq()
    ids = torch.tensor([[1, 5, 0]])
    out = e(ids)
    for pos, i in enumerate([1, 5]):
        want = torch.cat([e.centroids[k, int(e.codes[i, k])] for k in range(e.M)])
        assert torch.equal(out[0, pos], want)
    assert torch.equal(out[0, 2], torch.zeros(e.d))  # padding embeds to zeros


@pytest.mark.parametrize("make", [_jpq, lambda: FullEmbedding(n_items=300, d=32)])
def test_score_all_equals_dense_product_with_reconstruction(make) -> None:
    e = make()
    h = torch.randn(7, e.d)
    ref = h @ e.reconstruct().T
    torch.testing.assert_close(e.score_all(h, chunk=37), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [_jpq, lambda: FullEmbedding(n_items=300, d=32)])
@pytest.mark.parametrize("c", [1, 3, 40])
def test_score_equals_matching_columns(make, c: int) -> None:
    e = make()
    h = torch.randn(2, 5, e.d)
    ids = torch.randint(1, 301, (2, 5, c))
    ref = torch.einsum("bld,bldc->blc", h, e.reconstruct()[ids].permute(0, 1, 3, 2))
    torch.testing.assert_close(e.score(h, ids), ref, rtol=1e-5, atol=1e-5)
    shared = torch.randint(1, 301, (2, c))
    ref2 = torch.einsum("bld,bcd->blc", h, e.reconstruct()[shared])
    torch.testing.assert_close(e.score_shared(h, shared), ref2, rtol=1e-5, atol=1e-5)


def test_jpq_sub_item_scores_sum_to_item_scores() -> None:
    e = _jpq()
    h = torch.randn(3, e.d)
    s = e.sub_scores(h)  # (3, M, ksub)
    item = 17
    want = sum(s[:, k, int(e.codes[item, k])] for k in range(e.M))
    torch.testing.assert_close(want, (h * e.reconstruct()[item]).sum(-1))


def test_only_centroids_are_item_parameters() -> None:
    e = _jpq()
    names = {n for n, _ in e.named_parameters()}
    assert names == {"centroids"}
    assert e.centroids.shape == (4, 16, 8)


def test_gbce_with_t0_equals_bce() -> None:
    torch.manual_seed(0)
    pos, neg = torch.randn(4, 6), torch.randn(4, 6, 9)
    valid = torch.rand(4, 6) > 0.3
    a = losses.gbce(pos, neg, valid, n_items=1000, t=0.0)
    b = losses.bce_with_negatives(pos, neg, valid)
    torch.testing.assert_close(a, b)
    # and BCE is the textbook formula
    w = valid.float()
    manual = ((F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
               + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none").sum(-1)) * w).sum() / w.sum()
    torch.testing.assert_close(b, manual)


def test_gbce_transforms_positive_probability_to_power_beta() -> None:
    s = torch.linspace(-6, 6, 25)
    beta = losses.gbce_beta(256, 3416, 0.75)
    assert 0 < beta < 1
    got = torch.sigmoid(losses.gbce_positive_logits(s, beta).double())
    torch.testing.assert_close(got, torch.sigmoid(s.double()) ** beta, rtol=1e-6, atol=1e-9)
    assert losses.gbce_beta(256, 3416, 0.0) == pytest.approx(1.0)


def test_padding_never_contributes_to_losses() -> None:
    pos, neg = torch.randn(2, 3), torch.randn(2, 3, 4)
    valid = torch.tensor([[True, False, True], [False, False, True]])
    a = losses.bce_with_negatives(pos, neg, valid)
    pos2, neg2 = pos.clone(), neg.clone()
    pos2[~valid] = 1e4
    neg2[~valid] = -1e4
    torch.testing.assert_close(a, losses.bce_with_negatives(pos2, neg2, valid))
    logits, tgt = torch.randn(3, 10), torch.tensor([1, 2, 3])
    v = torch.tensor([True, False, True])
    torch.testing.assert_close(losses.softmax_ce(logits, tgt, v), F.cross_entropy(logits[v], tgt[v]))


def test_negatives_depend_only_on_seed_step_user() -> None:
    a = uniform_negatives(3, 10, torch.tensor([5, 9, 11]), 7, 4, 50, per_position=True)
    b = uniform_negatives(3, 10, torch.tensor([11]), 7, 4, 50, per_position=True)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a, uniform_negatives(3, 11, torch.tensor([5, 9, 11]), 7, 4, 50, per_position=True))
    big = uniform_negatives(0, 0, torch.arange(2000), 10, 10, 20, per_position=True)
    assert big.min() == 1 and big.max() == 20
    counts = torch.bincount(big.flatten(), minlength=21)[1:].double()
    assert (counts / counts.mean() - 1).abs().max() < 0.05  # uniform
    shared = uniform_negatives(0, 0, torch.arange(4), 10, 6, 20, per_position=False)
    assert shared.shape == (4, 6)


class _RecordShapes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("model", ["sasrec", "gsasrec"])
def test_jpq_training_at_a_million_items_never_allocates_an_item_table(model: str) -> None:
    n_items, d = 1_000_000, 64
    cfg = build_config(model, overrides={"d": d, "max_len": 20, "negatives": 16 if model == "gsasrec" else 1,
                                         "batch_size": 4})
    codes = torch.randint(0, 256, (n_items + 1, 8), dtype=torch.uint8)
    codes[0] = 0
    m = build_model(model_args_from_config(cfg, n_items, (n_items + 1, 8), 256), codes)
    from recjpq_cli.ranking import target_ranks
    from recjpq_cli.stages.train import LossModule

    step = LossModule(m, cfg, torch.device("cpu"))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    inp = torch.randint(1, n_items + 1, (4, 20))
    batch = {"inp": inp, "tgt": torch.randint(1, n_items + 1, (4, 20)),
             "negs": uniform_negatives(0, 0, torch.arange(4), 20, cfg.negatives, n_items, per_position=True)}
    rec = _RecordShapes()
    with rec:
        loss = step(**batch)
        loss.backward()
        opt.step()
        with torch.no_grad():
            h = m.encode(inp)
            target_ranks(m.items, h, torch.tensor([1, 2, 3, 4]), chunk=65_536)
    assert rec.largest < n_items * d / 4, f"a tensor of {rec.largest} elements was allocated"
    assert not any(len(s) >= 2 and s[0] >= n_items and s[-1] == d for s in rec.shapes)
    assert math.isfinite(float(loss.detach()))
