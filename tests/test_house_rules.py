"""House rules checked on the source: no import cycle between pocketdiff's packages (function-local imports
included), pocketdiff's own modules imported at the top of files, CLI files of at most 300 lines, and every
stage command's CLI defaults equal to its config dataclass's."""

import ast
import dataclasses
from pathlib import Path

import pytest

from pocketdiff.cli import build_parser
from pocketdiff.cli.common import config_from_args
from pocketdiff.cli.stages import STAGE_COMMANDS

ROOT = Path(__file__).parents[1] / "pocketdiff"


def _node(module: str) -> str:
    """A package (``pocketdiff.export``) or a top-level module (``pocketdiff.build``) is one node."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pocketdiff"


def _imports(path: Path):
    """(imported pocketdiff module, is the import inside a function or class) for every import in ``path``."""
    for n in ast.walk(ast.parse(path.read_text())):
        names = [n.module] if isinstance(n, ast.ImportFrom) and n.module else \
            [a.name for a in n.names] if isinstance(n, ast.Import) else []
        for m in names:
            if m.startswith("pocketdiff"):
                yield m, n.col_offset > 0


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for f in ROOT.rglob("*.py"):
        src = _node(".".join(f.relative_to(ROOT.parent).with_suffix("").parts))
        for m, _ in _imports(f):
            if _node(m) not in (src, "pocketdiff"):
                edges.setdefault(src, set()).add(_node(m))
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_between_packages():
    edges = _graph()
    assert {"runtime", "export", "benchmarks", "distill", "toyworld"} <= set(edges)  # the graph is real
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    assert "export" not in edges.get("runtime", ()) and "runtime" in edges["export"]  # the runtime is the bottom
    assert _cycle({**edges, "runtime": {"export"}}) is not None  # and the check finds a cycle when there is one


def test_pocketdiff_modules_are_imported_at_the_top():
    local = [f"{f.relative_to(ROOT.parent)}: {m}" for f in ROOT.rglob("*.py") for m, inner in _imports(f) if inner]
    assert local == []


def test_cli_files_are_short():
    long = {f.name: n for f in (ROOT / "cli").glob("*.py") if (n := len(f.read_text().splitlines())) > 300}
    assert long == {}


def _stage_parsers():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name: sub.choices[name] for name in STAGE_COMMANDS}


@pytest.mark.parametrize("command", list(STAGE_COMMANDS))
def test_stage_command_defaults_are_the_config_defaults(command):
    cls = STAGE_COMMANDS[command][0]
    args = _stage_parsers()[command].parse_args(["--pipeline", "p", "--teacher", "t", "--out", "o"]
                                                if command == "slim-finetune" else ["--pipeline", "p", "--out", "o"])
    assert dataclasses.asdict(config_from_args(cls, args)) == dataclasses.asdict(cls())
    flags = {o for a in _stage_parsers()[command]._actions for o in a.option_strings}
    for f in dataclasses.fields(cls):  # every field is a flag (a nested config's with its prefix)
        assert any(flag.startswith("--" + f.name.replace("_", "-")) for flag in flags), f.name
