"""Give every notebook an "Open in Colab" badge and an install cell (idempotent).

    python tools/add_colab.py nbs/*.ipynb

The install cell clones the repository and installs it editable when `dpo_notes` is not importable
(the toy assets live in `data/` beside the package, so a plain `pip install` of the package is not
enough); anywhere it is already installed the cell does nothing.
"""
import json, sys
from pathlib import Path

REPO = "dpo-notes/dpo_notes"
MARK = "<!-- colab -->"
INSTALL = '''# Colab / a fresh machine: clone and install dpo_notes (skipped when it is already installed)
import importlib.util, subprocess, sys
if importlib.util.find_spec("dpo_notes") is None:
    subprocess.run("git clone -q https://github.com/%s && pip install -q -e dpo_notes", shell=True, check=True)
    sys.path.insert(0, "dpo_notes")''' % REPO

def _src(text): return [l + "\n" for l in text.split("\n")[:-1]] + [text.split("\n")[-1]]

def add(path):
    nb = json.loads(Path(path).read_text())
    if any(MARK in "".join(c["source"]) for c in nb["cells"]): return False
    badge = (f"{MARK}\n[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{REPO}/blob/main/nbs/{Path(path).name})")
    i = next((k + 1 for k, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"), 0)
    nb["cells"][i:i] = [{"cell_type": "markdown", "metadata": {}, "source": _src(badge)},
                        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": _src(INSTALL)}]
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True

if __name__ == "__main__":
    for p in sys.argv[1:]:
        if Path(p).name.startswith("_"): continue
        print(p, "added" if add(p) else "already there")
