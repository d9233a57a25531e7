"""The masked task (BERT4Rec): masks drawn on the host from (seed, step, user, position), masked positions
packed to a (B, P) layout that a gather reads, the same positions and order as a boolean index (issues 18, 20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recjpq_cli import negatives
from recjpq_cli.config import build_config
from recjpq_cli.data import sequences
from recjpq_cli.data.schema import load_dataset
from recjpq_cli.models.registry import build_model, model_args_from_config
from recjpq_cli.models.sampling import sampler
from recjpq_cli.models.tasks import MASKED


def test_mask_draws_depend_on_seed_step_user_position_only() -> None:
    users = np.array([5, 17, 3, 40])
    a = negatives.uniform01(0, 7, users, 30)
    b = negatives.uniform01(0, 7, users[::-1].copy(), 30)[::-1]  # another batch order: the same rows
    assert np.array_equal(a, b) and a.shape == (4, 30)
    assert np.array_equal(a[1], negatives.uniform01(0, 7, np.array([17]), 30)[0])  # alone, as on another rank
    assert not np.array_equal(a, negatives.uniform01(0, 8, users, 30))  # the next step
    assert not np.array_equal(a, negatives.uniform01(1, 7, users, 30))  # another seed
    assert ((a >= 0) & (a < 1)).all()


def test_mask_draws_are_uniform() -> None:
    u = negatives.uniform01(0, 0, np.arange(2000), 200).ravel()
    assert abs(u.mean() - 0.5) < 0.005 and abs((u < 0.2).mean() - 0.2) < 0.005
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = u.size / 20
    assert ((hist - expected) ** 2 / expected).sum() < 60  # chi-square, 19 degrees of freedom: p ~ 3e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_slots_pack_each_rows_positions_in_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 12)) < 0.3
    mask[3] = False  # a row with nothing masked
    pos, filled = sequences.masked_slots(mask)
    assert pos.shape == filled.shape == (7, max(1, mask.sum(1).max()))
    for b in range(7):
        assert np.array_equal(pos[b][filled[b]], np.flatnonzero(mask[b]))
    rows, cols = np.nonzero(filled)
    assert np.array_equal(np.stack([rows, pos[rows, cols]]), np.stack(np.nonzero(mask)))  # row-major order
    empty_pos, empty_filled = sequences.masked_slots(np.zeros((2, 5), dtype=bool))
    assert empty_pos.shape == (2, 1) and not empty_filled.any()


@pytest.mark.parametrize("negs", [0, 16])
def test_masked_predictions_equal_a_boolean_index(sample_ds, negs: int) -> None:
    """The gathered (B, P) states, targets and rows are h[mask], seq[mask] in the same order."""
    ds = load_dataset(sample_ds)
    cfg = build_config("bert4rec", overrides={"d": 16, "max_len": 20, "negatives": negs, "loss": "ce",
                                              "negatives_per": "position"}, flags={"embedding": "full"})
    n_train = sequences.train_lengths(ds)
    users = np.arange(32)
    torch.manual_seed(0)
    model = build_model(model_args_from_config(cfg, ds.n_items, None, None), None).eval()
    batch = MASKED.batch(cfg, ds, users, n_train, 3, torch.device("cpu"), sampler(cfg, ds, torch.device("cpu")))
    pred = MASKED.predict(model, batch, torch.device("cpu"))
    mask, seq = batch["mask"], batch["seq"]
    assert mask[:, -1].equal(seq[:, -1] != 0) and not mask[seq == 0].any()  # last real item always; never padding
    inp = torch.where(mask, torch.full_like(seq, ds.n_items + 1), seq)
    with torch.no_grad():
        ref = model.hidden(inp)[mask]
    v = pred.valid
    assert torch.equal(pred.h[v], ref) and torch.equal(pred.target[v], seq[mask])
    if negs:
        assert torch.equal(pred.negatives[v], batch["negs"][mask]) and pred.rows is None
    else:
        assert torch.equal(pred.rows, torch.from_numpy(np.flatnonzero(v.numpy())))


@pytest.mark.parametrize("sets", [
    {"loss": "gbce", "negatives": 16, "gbce_t": 0.75},  # gBERT4Rec, per-position negatives
    {"loss": "bce", "negatives": 8, "negatives_per": "sequence"},
    {"loss": "ce", "negatives": 16, "negatives_per": "sequence"},  # shared: one batched product per sequence
    {"loss": "ce", "negatives": 16, "negative_sampling": "popularity"},  # with logQ
    {"loss": "ce", "negatives": 0},  # full softmax over host-found rows
])
def test_masked_loss_and_gradients_equal_a_boolean_index_reference(sample_ds, sets: dict) -> None:
    """The packed (B, P) layout gives the loss and gradients of scoring h[mask] row by row."""
    from recjpq_cli.models import losses, objective

    ds = load_dataset(sample_ds)
    cfg = build_config("bert4rec", overrides={"d": 16, "max_len": 20, "dropout": 0.0, **sets})
    n_train = sequences.train_lengths(ds)
    torch.manual_seed(0)
    codes = torch.randint(0, 32, (ds.n_items + 1, 4), dtype=torch.uint8)
    codes[0] = 0
    model = build_model(model_args_from_config(cfg, ds.n_items, tuple(codes.shape), 32), codes)
    smp = sampler(cfg, ds, torch.device("cpu"))
    batch = MASKED.batch(cfg, ds, np.arange(40), n_train, 5, torch.device("cpu"), smp)
    got = objective.loss(cfg, model.items, MASKED.predict(model, batch, torch.device("cpu")), None, smp.log_q)
    got_grads = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)

    mask, seq = batch["mask"], batch["seq"]
    h = model.hidden(torch.where(mask, torch.full_like(seq, ds.n_items + 1), seq))[mask]  # (N, d)
    target, ones = seq[mask], torch.ones(int(mask.sum()), dtype=torch.bool)
    if cfg.negatives == 0:
        logits = model.items.score_all(h)
        logits[:, 0] = float("-inf")
        want = losses.softmax_ce(logits, target, ones)
    else:
        negs = batch["negs"]
        negs = negs[mask] if negs.dim() == 3 else negs[mask.nonzero()[:, 0]]  # (N, K)
        pos, neg = model.items.score(h, target.unsqueeze(-1))[:, 0], model.items.score(h, negs)
        if cfg.loss == "ce":
            want = losses.sampled_softmax_ce(pos, neg, ones, pos_ids=target, neg_ids=negs, log_q=smp.log_q)
        else:
            shift = cfg.resolved_logit_shift()
            want = losses.gbce(pos + shift, neg + shift, ones, n_items=ds.n_items,
                               t=cfg.gbce_t if cfg.loss == "gbce" else 0.0)
    want_grads = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_memory_bound_holds_the_packed_layout() -> None:
    """B x P, as allocated, never exceeds the estimate's predicted positions (short and long windows)."""
    for length, p in [(200, 0.2), (50, 0.2), (200, 0.1), (20, 0.15)]:
        cfg = build_config("bert4rec", overrides={"max_len": length, "mask_prob": p, "batch_size": 128})
        bound = MASKED.predicted_positions(cfg)
        for step in range(100):
            m = MASKED.masks(cfg, np.arange(128) + 128 * step, np.full(128 * 100, 10_000), step)
            assert 128 * m.sum(1).max() <= bound, (length, p, step)


def test_ddp_denominator_is_the_global_masked_count(sample_ds) -> None:
    """global_positions (the whole batch, before it is split between ranks) counts the masks batch() draws."""
    ds = load_dataset(sample_ds)
    cfg = build_config("bert4rec", overrides={"max_len": 20})
    n_train = sequences.train_lengths(ds)
    users = np.arange(10, 74)
    total = MASKED.global_positions(cfg, users, n_train, 9)
    halves = [MASKED.batch(cfg, ds, users[r::2], n_train, 9, torch.device("cpu"), sampler(cfg, ds, torch.device("cpu")))
              for r in range(2)]
    assert total == sum(float(h["filled"].sum()) for h in halves) > 0
