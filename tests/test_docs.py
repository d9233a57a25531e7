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


# ------------------------------------------------------------------ docs/cli.md against the CLI itself
_OPT = re.compile(r"(?:^|[\s/,(])(--?[A-Za-z][A-Za-z0-9-]*)")


def _cli_options() -> dict[str, set[str]]:
    """Every command's option strings (short and long, both sides of a --x/--no-x flag), from typer."""
    import typer.main

    group = typer.main.get_command(app)
    return {name: {o for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}
            for name, cmd in group.commands.items()}


def _documented_options(name: str) -> set[str]:
    """The options in the first column of the tables under ``## `recjpq NAME ...`` in docs/cli.md."""
    cli = (ROOT / "docs" / "cli.md").read_text()
    section = cli.split(f"## `recjpq {name}", 1)[1].split("\n## ", 1)[0]
    found: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        first = line.split("|")[1]
        for span in re.findall(r"`([^`]+)`", first):
            found |= set(_OPT.findall(span))
    return found


def test_every_option_of_every_command_is_in_cli_md_and_nothing_else() -> None:
    wrong = []
    for name, opts in _cli_options().items():
        documented = _documented_options(name)
        if opts - documented:
            wrong.append(f"recjpq {name}: not in docs/cli.md: {sorted(opts - documented)}")
        if documented - opts:
            wrong.append(f"recjpq {name}: in docs/cli.md but not in the CLI: {sorted(documented - opts)}")
    assert not wrong, "\n".join(wrong)


# -------------------------------------------------------------- relative links, #anchors included
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _outside_code(text: str) -> list[str]:
    """The lines of a markdown file outside fenced code blocks, with inline code removed."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation other than '-' and '_' dropped,
    spaces to '-', repeats suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in _outside_code(text):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link's text stays
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_github_anchor_rules() -> None:
    text = "# The `recjpq` command line\n## `recjpq prepare INPUT --out DIR`\n## Codes file (`codes.npy` + `codes.yaml`)\n" \
           "## scoring\n## scoring\n```\n# not a heading\n```\n"
    assert github_anchors(text) == {"the-recjpq-command-line", "recjpq-prepare-input---out-dir",
                                    "codes-file-codesnpy--codesyaml", "scoring", "scoring-1"}


def test_every_relative_link_resolves_with_its_anchor() -> None:
    broken = []
    for doc in _docs():
        lines = _outside_code(doc.read_text())
        for target in (t for line in lines for t in _LINK.findall(re.sub(r"`[^`]*`", "", line))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and (dest.suffix != ".md" or anchor not in github_anchors(dest.read_text())):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
