"""Length of the exported cells of each notebook: non-blank lines, `#|` directives not counted.

    python tools/cell_stats.py [nbs/*.ipynb]

The project's rule (CONTRIBUTING.md): no exported cell over 60 lines, a median of at most 12.
"""
import json, statistics, sys
from pathlib import Path

def exported_lengths(path) -> list[int]:
    "Non-blank, non-directive line counts of the `#| export` cells of notebook `path`."
    out = []
    for c in json.loads(Path(path).read_text())["cells"]:
        src = "".join(c["source"]).splitlines()
        if c["cell_type"] != "code" or not any(l.strip().startswith("#| export") for l in src): continue
        out.append(sum(1 for l in src if l.strip() and not l.strip().startswith("#|")))
    return out

if __name__ == "__main__":
    paths = sys.argv[1:] or sorted(str(p) for p in Path("nbs").glob("[0-9]*.ipynb"))
    print(f"{'notebook':28s} {'cells':>5s} {'median':>6s} {'max':>4s} {'>60':>4s}")
    every = []
    for p in paths:
        n = exported_lengths(p); every += n
        if n: print(f"{Path(p).stem:28s} {len(n):5d} {statistics.median(n):6.1f} {max(n):4d} {sum(x > 60 for x in n):4d}")
    if every: print(f"{'all':28s} {len(every):5d} {statistics.median(every):6.1f} {max(every):4d} {sum(x > 60 for x in every):4d}")
