"""The library reads like the code it is compared with (issue 20): one statement per line and imports at the top
(`ruff check dpo_notes`, pyproject.toml's rules, in the README's test command), and no line over 110 characters
except nbdev's own generated `__all__`, which it wraps at 120. `python tools/format_exported.py` fixes the notebooks."""
import ast, re
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "dpo_notes"
MODULES = sorted(p for p in LIB.glob("*.py") if p.name not in ("_modidx.py", "__init__.py"))


def _all_block(lines: list[str]) -> set[int]:
    "Line numbers (0-based) of the `__all__ = [...]` block nbdev writes after `# %% auto #0`."
    out, inside = set(), False
    for i, l in enumerate(lines):
        if l.startswith("__all__ = ["): inside = True
        if inside:
            out.add(i)
            if l.rstrip().endswith("]"): inside = False
    return out


def test_lines_fit_110():
    long = []
    for p in MODULES:
        lines = p.read_text().splitlines()
        skip = _all_block(lines)
        long += [f"{p.name}:{i + 1} ({len(l)})" for i, l in enumerate(lines) if len(l) > 110 and i not in skip]
    assert not long, f"{len(long)} lines over 110 characters: {long[:10]}"


def test_one_statement_per_line():
    "No `a; b` and no `if x: y` on one line (ruff checks it too; this says where without ruff installed)."
    found = []
    for p in MODULES:
        src = p.read_text()
        for node in ast.walk(ast.parse(src)):
            body = getattr(node, "body", None)
            if isinstance(body, list) and isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.FunctionDef, ast.Try)):
                if body and body[0].lineno == node.lineno: found.append(f"{p.name}:{node.lineno}")
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                if isinstance(stmts, list):
                    found += [f"{p.name}:{b.lineno}" for a, b in zip(stmts, stmts[1:]) if a.end_lineno == b.lineno]
    assert not found, f"{len(found)} places with two statements on a line: {found[:10]}"
