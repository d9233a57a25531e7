"""Every command is documented in README.md and docs/cli.md, and the Quickstart is two commands."""

from __future__ import annotations

import re
from pathlib import Path

from recjpq_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    return sorted(c.name for c in app.registered_commands)


def test_every_command_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    cli = (ROOT / "docs" / "cli.md").read_text()
    assert set(_commands()) == {"synth", "prepare", "assign", "train", "evaluate", "compress", "recommend",
                               "serve"}
    for name in _commands():
        assert f"recjpq {name}" in readme, name
        assert f"## `recjpq {name}" in cli, name


def test_quickstart_is_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    cmds = [ln.split("#")[0].strip() for ln in block.strip().splitlines() if ln.split("#")[0].strip()]
    assert cmds == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_config_key_is_documented() -> None:
    from recjpq_cli.config import TrainConfig

    doc = (ROOT / "docs" / "training.md").read_text()
    for key in TrainConfig.__dataclass_fields__:
        if key in ("model", "embedding"):
            continue
        assert re.search(rf"`{key}`", doc), key
