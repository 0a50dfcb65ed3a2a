"""The README's layer picture is the real import graph of `dpo_notes/*.py`, and imports sit at the module tops.

The picture (README.md, the code block after "The modules are layered") lists the modules row by row, top to bottom;
a module may import only from the rows below its own, or from the module an arrow `a -> b` in its row points to.
These tests read that block and every module's top-level `from .x import` lines (no package import happens here)."""
from __future__ import annotations
import ast, re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "dpo_notes"
MODULES = sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_"))


def picture() -> list[tuple[list[str], list[tuple[str, str]]]]:
    "The README's rows, top first: (modules of the row, arrows (a, b) drawn in it)."
    text = (ROOT / "README.md").read_text()
    block = text[text.index("The modules are layered"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    rows = []
    for line in block.splitlines():
        if not line.strip(): continue
        names = re.split(r"\s{2,}", line.strip())[0]            # the modules, before the description
        mods, arrows = [], []
        for part in (p.strip() for p in names.split(",")):
            chain = [m.strip() for m in part.split("->")]
            mods += chain
            arrows += list(zip(chain, chain[1:]))
        rows.append((mods, arrows))
    return rows


def top_imports(module: str) -> set[str]:
    "The package modules `module` imports at its top level (`from .x import ...`, `from . import x`)."
    tree = ast.parse((PKG / f"{module}.py").read_text())
    deps = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            deps |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dpo_notes."):
            deps.add(node.module.split(".")[1])   # nbdev leaves multi-line imports absolute
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dpo_notes.")}
    return deps - {module, "_modidx"}


def test_picture_lists_every_module_once():
    listed = [m for mods, _ in picture() for m in mods]
    assert sorted(listed) == MODULES, f"README picture: {sorted(listed)}, modules: {MODULES}"


def test_no_import_goes_up_or_sideways():
    rows = picture()
    row_of = {m: i for i, (mods, _) in enumerate(rows) for m in mods}
    arrows = {a for _, arr in rows for a in arr}
    bad = [(m, d) for m in MODULES for d in sorted(top_imports(m))
           if not (row_of[d] > row_of[m] or (m, d) in arrows)]
    assert not bad, f"imports not allowed by the README picture (module, imported): {bad}"


def test_every_arrow_is_an_import():
    missing = [(a, b) for _, arr in picture() for a, b in arr if b not in top_imports(a)]
    assert not missing, f"arrows drawn in the README that no module top imports: {missing}"


def test_module_table_matches_the_notebooks():
    "The README's table row of each notebook names the module its `#| default_exp` exports."
    text = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\d\d_\w+)` \|\s*`?(\w*)`?\s*\|", text, re.M))
    exported = {}
    for nb in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        m = re.search(r"#\| default_exp (\w+)", nb.read_text())
        exported[nb.stem] = m.group(1) if m else ""
    assert table == exported


def test_function_level_imports_say_why():
    "An import inside a function is for an optional dependency or to break a cycle, and says so (`# why:`)."
    bad = []
    for p in sorted(PKG.glob("*.py")):
        lines = p.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "# why:" not in lines[node.lineno - 1]:
                    bad.append(f"{p.name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "function-level imports without a `# why:` comment:\n" + "\n".join(sorted(set(bad)))


def test_module_docstrings_say_what_and_where():
    "Each module opens with a docstring of lines <= 100 characters that says which notebook teaches it."
    for m in MODULES:
        src = (PKG / f"{m}.py").read_text()
        tree = ast.parse(src)
        doc = ast.get_docstring(tree)
        assert doc, f"{m}.py has no module docstring"
        assert re.search(r"Taught in notebook \d\d, `nbs/\d\d_\w+\.ipynb`", doc), f"{m}.py: docstring names no notebook"
        first = tree.body[0]
        long = [l for l in src.splitlines()[first.lineno - 1:first.end_lineno] if len(l) > 100]
        assert not long, f"{m}.py: docstring lines over 100 characters: {long}"
