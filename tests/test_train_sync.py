"""The training loop waits on the device only once per progress update (issue 20).

Every host read of a tensor (``item``, ``cpu``, ``tolist``, ``numpy``, ``float``, ``int``, ``bool``) made by
our code while a step runs is counted, on the CPU; torch's own internals (Adam's step counter) are not ours
and are not counted. With ``log_every`` L, S steps must make exactly S / L reads.
"""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import invoke

from recjpq_cli.models import registry

READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")
TINY = ["--set", "d=16", "--set", "max_len=20", "--set", "val_users=50", "--device", "cpu",
        "--set", "steps_per_epoch=1000", "-q"]  # no epoch ends: only the steps and the final validation


def _inside_a_step() -> bool:
    f = sys._getframe(1).f_back  # the tensor method's caller; None when called from C with no Python frame
    if f is None:
        return False
    ours = f.f_globals.get("__name__", "").startswith("recjpq_cli")
    while f is not None:
        if f.f_code.co_name == "_one_step":
            return ours
        f = f.f_back
    return False


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    seen: list[str] = []
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, _name=name, **k):
            if _inside_a_step():
                seen.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return seen


@pytest.fixture(scope="module")
def codes(tmp_path_factory, sample_ds):
    out = tmp_path_factory.mktemp("sync") / "codes.npy"
    assert invoke(["assign", sample_ds, "--strategy", "random", "-m", "4", "-b", "64", "--out", out, "-q"]).exit_code == 0
    return out


@pytest.mark.parametrize("model,emb,log_every,sets", [
    ("sasrec", "jpq", 10, []), ("sasrec", "jpq", 5, []), ("gsasrec", "jpq", 10, ["negatives=16"]),
    ("bert4rec", "jpq", 10, []), ("sasrec", "full", 10, []),
    ("sasrec", "jpq", 10, ["loss=ce", "negatives=0"]),  # full softmax over host-found rows
    ("bert4rec", "jpq", 10, ["loss=gbce", "negatives=16", "negatives_per=sequence"]),  # gBERT4Rec, gathered slots
    ("gru4rec", "jpq", 10, ["negatives=16"]),  # sampled softmax, its default loss
])
def test_one_host_read_per_progress_update(sample_ds, codes, tmp_path, reads, model, emb, log_every, sets) -> None:
    src = ["--codes", codes] if emb == "jpq" else ["--embedding", "full"]
    heads = ["num_heads=1"] if "num_heads" in registry.spec(model).keys else []  # others refuse the key
    extra = [a for s in [*heads, *sets] for a in ("--set", s)]
    res = invoke(["train", sample_ds, *src, "--model", model, "--out", tmp_path / "r", "--max-steps", 30,
                  "--set", f"log_every={log_every}", *TINY, *extra])
    assert res.exit_code == 0, res.output
    assert len(reads) == 30 // log_every, reads
