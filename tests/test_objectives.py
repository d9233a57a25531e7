"""Every loss with every task through the CLI, and bad loss settings as one Error line before any work
(issue #18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import error_line, invoke

TINY = ["--set", "d=16", "--set", "max_len=10", "--set", "val_users=50", "--set", "steps_per_epoch=3",
        "--max-steps", 3, "--device", "cpu", "-q"]


@pytest.mark.parametrize("model,sets", [
    ("bert4rec", ["loss=gbce", "negatives=16"]),  # gBERT4Rec
    ("bert4rec", ["loss=ce", "negatives=16", "negatives_per=sequence"]),  # sampled-softmax BERT4Rec
    ("sasrec", ["loss=ce", "negatives=16", "negative_sampling=popularity"]),  # logQ on by default
    ("sasrec", ["loss=ce", "negatives=0"]),  # full softmax for a next-item model
    ("gru4rec", ["loss=bce", "negatives=1"]),
])
def test_every_loss_trains(trained: dict[str, Path], tmp_path: Path, model: str, sets: list[str]) -> None:
    run = tmp_path / "run"
    extra = [a for s in sets for a in ("--set", s)]
    res = invoke(["train", trained["ds"], "--model", model, "--codes", trained["codes"], "--out", run, *TINY,
                  *extra, "--json", "-"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["steps"] == 3 and facts["last_loss"] == facts["last_loss"]  # finite, not NaN
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for s in sets:
        k, v = s.split("=")
        assert str(saved[k]).lower() == v.lower()


@pytest.mark.parametrize("sets,words", [
    (["loss=softmax"], ["loss", "bce, gbce, ce"]),
    (["loss=bce", "negatives=0"], ["loss=bce", "negatives"]),
    (["negatives=5000"], ["negatives=5,000", "2,000 items"]),
    (["negative_sampling=zipf"], ["negative_sampling", "uniform, popularity"]),
])
def test_bad_loss_settings_are_one_error_line(trained: dict[str, Path], tmp_path: Path, sets: list[str],
                                              words: list[str]) -> None:
    extra = [a for s in sets for a in ("--set", s)]
    res = invoke(["train", trained["ds"], "--codes", trained["codes"], "--out", tmp_path / "r", *extra])
    assert res.exit_code == 1
    line = error_line(res)
    assert all(w in line for w in words), line
    assert not (tmp_path / "r").exists()


def test_a_full_softmax_that_cannot_fit_names_the_sampled_settings(trained: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import recjpq_cli.training.setup as setup

    monkeypatch.setattr(setup, "available_bytes", lambda device: 1024)
    res = invoke(["train", trained["ds"], "--model", "bert4rec", "--codes", trained["codes"], "--out", tmp_path / "r"])
    assert res.exit_code == 1
    line = error_line(res)
    assert "--set loss=gbce --set negatives=256" in line
    assert not (tmp_path / "r").exists()


def test_gbert4rec_at_a_million_items_fits_where_bert4rec_does_not() -> None:
    """The memory estimate: BERT4Rec's full softmax at 1M items needs tens of GiB; gBERT4Rec well under 4."""
    from recjpq_cli.config import build_config
    from recjpq_cli.memory import GIB, estimate

    full = build_config("bert4rec", overrides={"d": 128})
    gbert = build_config("bert4rec", overrides={"d": 128, "loss": "gbce", "negatives": 256})
    n = 1_000_000
    assert estimate(full, n, 2 * n, 8, 256).total > 20 * GIB
    assert estimate(gbert, n, 2 * n, 8, 256).total < 4 * GIB
