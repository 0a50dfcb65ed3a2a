"""Render nbs/index.ipynb to README.md (nbdev_readme needs quarto, which this project does not install).

    python tools/make_readme.py

Markdown cells are copied; code cells become ```python blocks followed by their text output. Cells
whose source starts with `#| hide` are left out. The first two commands of the README are the contract
CI relies on (`.ci/run` runs the line that calls nbdev_test).
"""
import json
from pathlib import Path

def _text(out):
    "Plain-text form of a cell output, or None for images/widgets."
    if out["output_type"] == "stream": return "".join(out["text"]) if out.get("name") == "stdout" else None
    data = out.get("data", {})
    if "text/markdown" in data: return ("MD", "".join(data["text/markdown"]))
    if "text/plain" in data: return "".join(data["text/plain"])
    return None

def render(nb_path="nbs/index.ipynb", out_path="README.md"):
    nb = json.loads(Path(nb_path).read_text())
    parts = ["<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook -->\n"]
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown": parts.append(src.strip() + "\n"); continue
        if c["cell_type"] != "code" or src.lstrip().startswith("#| hide"): continue
        lines = [l for l in src.splitlines() if not l.startswith("#|")]
        parts.append("```python\n" + "\n".join(lines).strip() + "\n```\n")
        for o in c.get("outputs", []):
            t = _text(o)
            if isinstance(t, tuple): parts.append(t[1].strip() + "\n")
            elif t and t.strip(): parts.append("```\n" + t.rstrip() + "\n```\n")
    Path(out_path).write_text("\n".join(parts))
    print(f"wrote {out_path}")

if __name__ == "__main__": render()
