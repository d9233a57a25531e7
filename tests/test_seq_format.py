"""The `seq` input format (one user a line: `user item item ...`): detection, counts and order, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import error_line, invoke


def _write_seq(path: Path, n_users: int = 300, seed: int = 0) -> dict[int, list[int]]:
    """A one-user-a-line file with sparse, shuffled, non-contiguous ids, mixed whitespace and blank lines."""
    rng = np.random.default_rng(seed)
    users = rng.choice(np.arange(10, 10**9, 7), n_users, replace=False)  # far from 0..n-1, unordered
    item_ids = rng.choice(np.arange(3, 10**7, 13), 400, replace=False)
    seqs: dict[int, list[int]] = {}
    lines = []
    for i, u in enumerate(users):
        seq = rng.choice(item_ids, int(rng.integers(5, 40))).tolist()  # repeats within a line allowed
        seqs[int(u)] = [int(x) for x in seq]
        sep = "\t" if i % 3 == 0 else " " * (1 + i % 2)
        lines.append(sep.join(str(x) for x in [int(u), *seq]) + ("  " if i % 5 == 0 else ""))
        if i % 17 == 0:
            lines.append("" if i % 2 else "   ")
    path.write_text("\n".join(lines) + "\n")
    return seqs


def test_prepare_counts_what_a_direct_count_gives(tmp_path: Path) -> None:
    src = tmp_path / "beauty_seq.txt"
    seqs = _write_seq(src)
    out = tmp_path / "ds"
    res = invoke(["prepare", src, "--out", out, "--min-user-interactions", "1", "--json", tmp_path / "p.json", "-q"])
    assert res.exit_code == 0, res.output
    facts = json.loads((tmp_path / "p.json").read_text())
    assert facts["format"] == "seq" and facts["detected"] is True
    assert facts["n_users"] == len(seqs)
    assert facts["n_items"] == len({x for s in seqs.values() for x in s})
    assert facts["n_interactions"] == sum(len(s) for s in seqs.values())
    # every user's sequence, oldest first, is the line as written
    inter = pl.read_parquet(out / "interactions.parquet").sort("user", "pos")
    raw_u = pl.read_parquet(out / "users.parquet")
    raw_i = pl.read_parquet(out / "items.parquet")
    got = (inter.join(raw_u, on="user").join(raw_i.select("item", "raw_item"), on="item")
           .sort("user", "pos").group_by("raw_user", maintain_order=True).agg("raw_item"))
    back = {int(u): [int(x) for x in items] for u, items in got.iter_rows()}
    assert back == seqs


def test_two_field_lines_stay_sasrec(tmp_path: Path) -> None:
    src = tmp_path / "pairs.txt"
    src.write_text("".join(f"{u} {i}\n" for u in range(1, 30) for i in range(100, 106)))
    res = invoke(["prepare", src, "--out", tmp_path / "ds", "--json", "-", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["format"] == "sasrec"


@pytest.mark.parametrize("body,fmt,expect", [
    ("1 2 3 4\n5 6 x 8\n", "seq", "line 2: 'x' is not an integer"),
    ("1 2 3 4\n\n5 6 7.5 8\n", "seq", "line 3: '7.5' is not an integer"),
    ("1 2 3 4\n5 6 7\n1 9 9\n", None, "line 3: user 1 already has line 1"),
    ("1 2 3 4\n5\n", "seq", "line 2: user 5 has no items"),
])
def test_bad_lines_name_their_line_and_write_nothing(tmp_path: Path, body: str, fmt: str | None,
                                                     expect: str) -> None:
    src = tmp_path / "s.txt"
    src.write_text(body)
    res = invoke(["prepare", src, "--out", tmp_path / "ds", *(["--format", fmt] if fmt else [])])
    assert res.exit_code == 1
    assert expect in error_line(res)
    assert not (tmp_path / "ds").exists()
