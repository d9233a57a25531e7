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
