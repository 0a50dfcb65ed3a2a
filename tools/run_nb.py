"""Execute notebooks top to bottom (every cell, `slow` ones included), save their outputs, clean them.

    python tools/run_nb.py nbs/03_dpo_loss.ipynb [more.ipynb ...] [--skip gpu]

This is how the committed outputs are made: a reader on GitHub sees the numbers of this run.
Cells flagged with a flag in --skip (default: gpu) are left unexecuted, their old outputs cleared.
"""
import argparse, os, re, sys, time
from pathlib import Path

def _flags(src):
    "The `#| slow`/`#| gpu` style flags of a cell's source."
    return {m.group(1) for m in re.finditer(r"^#\|\s*(\w+)\s*$", src, re.M)}

_BAR = re.compile(r"^(\S.*?): *\d+%\|")                 # a tqdm bar line: "desc: 42%|"


def _terminal_view(text):
    """What a terminal shows of a stream once it ends: each line after its last carriage return (a bar's final state);
    a nested bar's lines (tqdm moves the cursor up with ESC[A and, with leave=False, erases them) dropped; and of the
    lines one unfinished bar left each time a nested bar pushed it down, only the last."""
    text = "".join(text) if isinstance(text, list) else text
    lines = [l.rsplit("\r", 1)[-1] for l in text.split("\n")]
    lines = [l for l in lines if "\x1b[A" not in l]
    out = []
    for l in lines:
        m = _BAR.match(l)
        prev = _BAR.match(out[-1]) if m and out else None
        if prev and prev.group(1) == m.group(1) and " 100%|" not in out[-1]: out[-1] = l    # the same bar, later
        else: out.append(l)
    return "\n".join(out)

def run(path, skip=("gpu",)):
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    os.environ.setdefault("DPO_NOTES_THREADS", "1")
    path = Path(path); nb = read_nb(path)
    for c in nb.cells:
        if c.cell_type == "code" and _flags(c.source) & set(skip): c.outputs, c.execution_count = [], None
    skipped = [c for c in nb.cells if c.cell_type == "code" and _flags(c.source) & set(skip)]
    for c in skipped: c.cell_type = "raw"     # hide from the shell
    cwd = os.getcwd(); os.chdir(path.parent)
    t0 = time.time()
    try:
        sh = CaptureShell(path, mpl_format="png")
        sh.run_all(nb, exc_stop=True)
    finally: os.chdir(cwd)
    for c in skipped: c.cell_type = "code"
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream": o["text"] = _terminal_view(o["text"])
    write_nb(nb, path)
    os.system(f"nbdev_clean --fname {path}")
    print(f"{path}: {time.time()-t0:.0f}s")

if __name__ == "__main__":
    p = argparse.ArgumentParser(); p.add_argument("nbs", nargs="+"); p.add_argument("--skip", default="gpu")
    a = p.parse_args()
    for f in a.nbs: run(f, skip=tuple(s for s in a.skip.split(",") if s))
