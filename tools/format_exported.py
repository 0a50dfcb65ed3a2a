"""Format the exported cells of the notebooks with ruff (the library's style: one statement per line, lines of at most
110 characters), in place, then `nbdev_export` regenerates `dpo_notes/`. Only `#| export` cells change: the notebook's
other cells are its prose in code and keep their shape.

    python tools/format_exported.py [nbs/NN_topic.ipynb ...]     # all notebooks when none is named
    nbdev_export && ruff check dpo_notes                          # what the test command checks"""
import subprocess, sys
from pathlib import Path

import ast

import json

sys.path.insert(0, str(Path(__file__).parent))
from wrap_strings import reflow_docstrings, wrap_comments, wrap_strings   # noqa: E402  (tools/ is not a package)

ROOT = Path(__file__).resolve().parents[1]


def exported(cell: dict) -> bool:
    "Whether a code cell goes into the library (`#| export`, `#|export`, `#| exporti`)."
    first = [line.replace(" ", "") for line in cell["source"] if line.startswith("#|")]
    return cell["cell_type"] == "code" and any(d.startswith("#|export") for d in first)


def ruff_format(source: str) -> str:
    "`source` as `ruff format` writes it, with the project's settings (pyproject.toml)."
    out = subprocess.run(["ruff", "format", "--stdin-filename", "cell.py", "-"], input=source, text=True,
                         capture_output=True, cwd=ROOT)
    if out.returncode != 0: raise SystemExit(f"ruff format failed on a cell:\n{out.stderr}\n{source[:400]}")
    return out.stdout.rstrip("\n")


def same_code(a: str, b: str) -> bool:
    "Whether two sources parse to the same tree, docstrings compared with their whitespace collapsed (only theirs)."
    def norm(src):
        tree = ast.parse(src)
        for n in ast.walk(tree):
            body = getattr(n, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                doc = body[0].value
                if isinstance(doc.value, str): doc.value = " ".join(doc.value.split())
        return ast.dump(tree)
    return norm(a) == norm(b)


def format_cell(source: str) -> str:
    """ruff format, then the over-long strings and comments broken (`wrap_strings`), then ruff format
    again, then docstring paragraphs that an earlier wrap left ragged filled again; the code unchanged
    (`same_code`)."""
    new = reflow_docstrings(ruff_format(wrap_comments(wrap_strings(ruff_format(source)))))
    if not same_code(source, new): raise SystemExit(f"formatting changed the code of a cell:\n{source[:400]}")
    return new


def main(paths) -> int:
    changed = 0
    for p in paths or sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        nb = json.loads(Path(p).read_text())          # raw JSON: outputs stay exactly as committed
        n = 0
        for c in nb["cells"]:
            if exported(c):
                old = "".join(c["source"])
                new = format_cell(old)
                if new != old:
                    c["source"] = new.splitlines(keepends=True)
                    n += 1
        if n:
            Path(p).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            print(f"{p}: {n} cells formatted")
            changed += n
    return 0


if __name__ == "__main__":
    sys.exit(main([Path(a) for a in sys.argv[1:]]))
