"""Rules of the code's shape (issue #17): no model is named outside its module and the registry, no
function grows past 80 lines, and ruff's size rules stay on."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

from recjpq_cli.models.registry import MODELS

PACKAGE = Path(__file__).resolve().parents[1] / "recjpq_cli"
MAX_LINES = 80
_NAMES = "|".join(map(re.escape, MODELS))
# a model name compared (==, !=) or tested for membership in a literal: cfg.model == "bert4rec", "sasrec" != m,
# m in ("sasrec", "gsasrec")
_COMPARISON = re.compile(rf"""([=!]=\s*["']({_NAMES})["'])|(["']({_NAMES})["']\s*[=!]=)|(\bin\s*[(\[{{][^)\]}}]*["']({_NAMES})["'])""")


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def model_name_comparisons(paths: list[Path], root: Path = PACKAGE) -> list[str]:
    hits = []
    for p in paths:
        rel = p.relative_to(root)
        if rel.parts[0] == "models":  # the model modules and the registry may name themselves
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if _COMPARISON.search(line.split("#")[0]):
                hits.append(f"{rel}:{i}: {line.strip()}")
    return hits


def long_functions(paths: list[Path], limit: int = MAX_LINES) -> list[str]:
    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_model_name_is_compared_outside_the_model_modules() -> None:
    assert model_name_comparisons(_sources()) == []


def test_the_scan_catches_a_comparison(tmp_path: Path) -> None:
    bad = tmp_path / "stages" / "x.py"
    bad.parent.mkdir()
    bad.write_text('if cfg.model == "bert4rec":\n    pass\nok = m in ("gsasrec", "other")\nfine = "sasrec"\n'
                   'if "gru4rec" != name:\n    pass\n')
    allowed = tmp_path / "models" / "y.py"
    allowed.parent.mkdir()
    allowed.write_text('if cfg.model == "bert4rec":\n    pass\n')
    hits = model_name_comparisons([bad, allowed], root=tmp_path)
    assert [h.split(":")[1] for h in hits] == ["1", "3", "5"]

def test_no_function_is_longer_than_80_lines() -> None:
    assert long_functions(_sources()) == []


def test_ruff_size_rules_are_on() -> None:
    conf = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"C901", "PLR0912", "PLR0915"} <= set(conf["select"]) | set(conf.get("extend-select", []))
    assert conf["mccabe"]["max-complexity"] == 15
    assert conf["pylint"]["max-branches"] == 15 and conf["pylint"]["max-statements"] == 50
