"""`pip install .` installs everything the package imports: each third-party module that a module of `dpo_notes` imports
at its top belongs to a distribution named in settings.ini's `requirements`, or to one those require (followed through
the installed packages' metadata, extras left out). Imports inside functions are the optional ones (each says why).
Without this, the README's first command fails on a fresh machine while the dev install, which has more, passes."""
from __future__ import annotations
import ast, configparser, re, sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    return {canonical(re.match(r"[A-Za-z0-9_.\-]+", s).group(0)) for s in cfg["DEFAULT"]["requirements"].split()}


def closure(names: set[str]) -> set[str]:
    "`names` and every distribution they require, transitively (extras left out)."
    seen, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n in seen: continue
        seen.add(n)
        try: reqs = metadata.requires(n) or []
        except metadata.PackageNotFoundError: continue
        for r in reqs:
            if "extra ==" in r: continue
            todo.append(canonical(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)))
    return seen


def top_level_imports() -> dict[str, str]:
    "Third-party top-level module -> the first dpo_notes file that imports it at module level."
    out = {}
    for p in sorted((ROOT / "dpo_notes").glob("*.py")):
        for node in ast.parse(p.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top != "dpo_notes" and top != "__future__":
                    out.setdefault(top, p.name)
    return out


def missing_imports(reqs: set[str]) -> dict[str, str]:
    "The top-level imports that the distributions `reqs` (and what they require) do not install: module -> file."
    allowed, dist_of = closure(reqs), metadata.packages_distributions()
    return {m: f for m, f in top_level_imports().items() if not any(canonical(d) in allowed for d in dist_of.get(m, []))}


def test_every_top_level_import_is_installed_by_the_requirements():
    missing = missing_imports(requirements())
    assert not missing, f"imported at a module's top but not installed by settings.ini's requirements: {missing}"


def test_the_check_finds_a_missing_requirement():
    "Without fastcore (nothing else in the requirements pulls it in) the check names `gpu.py`, as a fresh install did."
    assert missing_imports(requirements() - {"fastcore"}).get("fastcore") == "gpu.py"
