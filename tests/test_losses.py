"""The losses against direct references, and the negative samplers (issue #18)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recjpq_cli.models import losses
from recjpq_cli.negatives import popularity_negatives, popularity_table, uniform_negatives


def _full_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target], averaged: a plain computation."""
    return torch.stack([-(logits[i, target[i]] - logits[i].exp().sum().log()) for i in range(len(target))]).mean()


def test_full_softmax_equals_a_plain_computation() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 11, generator=g), torch.randint(0, 11, (6,), generator=g)
    got = losses.softmax_ce(logits, target, torch.ones(6, dtype=torch.bool))
    assert got == pytest.approx(float(_full_reference(logits, target)), rel=1e-6)
    assert losses.softmax_ce(logits, target, torch.ones(6, dtype=torch.bool), denom=3.0) == pytest.approx(2 * got)


@pytest.mark.parametrize("with_positive_among_negatives", [False, True])
def test_sampled_softmax_over_the_whole_catalogue_is_the_full_softmax(with_positive_among_negatives: bool) -> None:
    """Negatives = every other item (and, masked out, the positive itself): the full softmax's value."""
    g = torch.Generator().manual_seed(1)
    n, rows = 9, 5
    scores = torch.randn(rows, n + 1, generator=g)  # ids 0..n; 0 is padding, never a candidate
    target = torch.randint(1, n + 1, (rows,), generator=g)
    full_logits = scores.clone()
    full_logits[:, 0] = float("-inf")
    want = _full_reference(full_logits, target)
    ids = torch.arange(1, n + 1)
    if with_positive_among_negatives:
        neg_ids = ids.expand(rows, n)  # the positive is among them: masking drops it
    else:
        neg_ids = torch.stack([ids[ids != t] for t in target])
    pos = scores.gather(1, target[:, None])[:, 0]
    neg = scores.gather(1, neg_ids)
    got = losses.sampled_softmax_ce(pos, neg, torch.ones(rows, dtype=torch.bool), pos_ids=target, neg_ids=neg_ids)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_collisions_are_masked_and_shared_negatives_broadcast() -> None:
    pos = torch.tensor([[1.0, 2.0]])  # (B=1, L=2)
    pos_ids = torch.tensor([[3, 4]])
    neg_ids = torch.tensor([[[3, 5]]])  # (B, 1, K): shared by both positions; 3 is position 0's positive
    neg = torch.tensor([[[0.5, 0.25], [0.5, 0.25]]])
    valid = torch.tensor([[True, True]])
    got = losses.sampled_softmax_ce(pos, neg, valid, pos_ids=pos_ids, neg_ids=neg_ids)
    p0 = -(1.0 - math.log(math.exp(1.0) + math.exp(0.25)))  # the colliding negative is gone
    p1 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.5) + math.exp(0.25)))
    assert float(got) == pytest.approx((p0 + p1) / 2, rel=1e-6)
    pos.requires_grad_(True)
    loss = losses.sampled_softmax_ce(pos, neg, valid, pos_ids=pos_ids, neg_ids=neg_ids)
    loss.backward()
    assert torch.isfinite(pos.grad).all()


def test_logq_uniform_changes_nothing_and_popularity_corrects_every_logit() -> None:
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(4, generator=g), torch.randn(4, 6, generator=g)
    pos_ids, neg_ids = torch.randint(1, 21, (4,), generator=g), torch.randint(1, 21, (4, 6), generator=g)
    valid = torch.tensor([True, True, False, True])
    plain = losses.sampled_softmax_ce(pos, neg, valid, pos_ids=pos_ids, neg_ids=neg_ids)
    uniform = torch.full((21,), -math.log(20))
    assert float(losses.sampled_softmax_ce(pos, neg, valid, pos_ids=pos_ids, neg_ids=neg_ids, log_q=uniform)) == \
        pytest.approx(float(plain), rel=1e-6)
    log_q = torch.randn(21, generator=g)
    want = losses.sampled_softmax_ce(pos - log_q[pos_ids], neg - log_q[neg_ids], valid, pos_ids=pos_ids,
                                     neg_ids=neg_ids)
    got = losses.sampled_softmax_ce(pos, neg, valid, pos_ids=pos_ids, neg_ids=neg_ids, log_q=log_q)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(got) != pytest.approx(float(plain), rel=1e-3)


def test_gbce_with_t0_is_bce_and_works_on_masked_positions() -> None:
    g = torch.Generator().manual_seed(3)
    pos, neg = torch.randn(7, generator=g), torch.randn(7, 16, generator=g)  # (N,) masked positions
    valid = torch.ones(7, dtype=torch.bool)
    bce = losses.bce_with_negatives(pos, neg, valid)
    ref = (F.softplus(-pos) + F.softplus(neg).sum(-1)).mean()
    assert float(bce) == pytest.approx(float(ref), rel=1e-6)
    assert float(losses.gbce(pos, neg, valid, n_items=1000, t=0.0)) == pytest.approx(float(bce), rel=1e-6)
    assert float(losses.gbce(pos, neg, valid, n_items=1000, t=0.75)) != pytest.approx(float(bce), rel=1e-3)


def test_popularity_negatives_follow_the_counts_and_are_deterministic() -> None:
    counts = torch.tensor([0, 50, 0, 30, 15, 5])  # id 0 padding, id 2 never seen
    cum, log_q = popularity_table(counts)
    users = torch.arange(500)
    draws = popularity_negatives(7, 3, users, 10, 20, cum, per_position=True)  # 100,000 draws
    assert draws.shape == (500, 10, 20) and int(draws.min()) >= 1 and int(draws.max()) <= 5
    freq = torch.bincount(draws.flatten(), minlength=6).double() / draws.numel()
    assert freq[2] == 0 and freq[0] == 0
    want = counts.double() / counts.sum()
    assert torch.allclose(freq[[1, 3, 4, 5]], want[[1, 3, 4, 5]], atol=0.01)
    assert torch.allclose(log_q[[1, 3, 4, 5]].exp().double(), want[[1, 3, 4, 5]], rtol=1e-5)
    assert math.isfinite(float(log_q[2]))
    # a user's draws depend on (seed, step, user) only: not on the rest of the batch
    alone = popularity_negatives(7, 3, users[123:124], 10, 20, cum, per_position=True)
    assert torch.equal(alone[0], draws[123])
    assert not torch.equal(popularity_negatives(7, 4, users[:5], 10, 20, cum, True), draws[:5])
    shared = popularity_negatives(7, 3, users[:5], 10, 20, cum, per_position=False)
    assert shared.shape == (5, 20)


def test_uniform_negatives_unchanged() -> None:
    """The refactoring into one hash keeps every uniform draw (golden numbers depend on them)."""
    got = uniform_negatives(3, 10, torch.tensor([5, 9]), 3, 2, 50, per_position=True)
    assert got.tolist() == [[[38, 3], [3, 23], [14, 29]], [[21, 7], [21, 35], [25, 20]]]  # before the refactoring


def test_the_run_sampler_builds_log_q_only_for_popularity_with_the_correction_on(sample_ds) -> None:
    from recjpq_cli.config import build_config
    from recjpq_cli.data.schema import load_dataset
    from recjpq_cli.models.sampling import sampler

    ds, cpu = load_dataset(sample_ds), torch.device("cpu")
    pop = sampler(build_config("sasrec", overrides={"loss": "ce", "negatives": 8, "negative_sampling": "popularity"}),
                  ds, cpu)
    assert pop.cum_counts is not None and pop.log_q is not None and pop.log_q.shape == (ds.n_items + 1,)
    off = sampler(build_config("sasrec", overrides={"loss": "ce", "negatives": 8, "negative_sampling": "popularity",
                                                    "logq_correction": False}), ds, cpu)
    assert off.cum_counts is not None and off.log_q is None
    uni = sampler(build_config("sasrec", overrides={"loss": "ce", "negatives": 8}), ds, cpu)
    assert uni.cum_counts is None and uni.log_q is None  # a constant q would change nothing
    draws = pop.draw(0, np.arange(4), 5, cpu)
    counts = ds.train_counts()
    assert draws.shape == (4, 5, 8) and (counts[draws.numpy()] > 0).all()
