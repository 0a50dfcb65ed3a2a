"""The notebooks are numbered in reading order, and nothing is used before the notebook that teaches it.

Each numbered notebook with `#| default_exp m` teaches module `m`. A module may import at its top only modules of
notebooks with smaller numbers; a teaching cell (any code cell but a `#| gpu` one, which runs the finished package on a
real model on Colab) may use only modules of its own notebook or earlier ones, except the few forward looks listed in
`FORWARD`, each with the reason it is there. A new forward use fails here, and so does an entry that is no longer needed."""
from __future__ import annotations
import json, re
from pathlib import Path

from test_layers import top_imports

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))

# (notebook, module it uses before that module's notebook): why
FORWARD = {
    ("01_toy", "evals"): "the toy SFT models are sampled with `evals.generate`; notebook 09 builds the sampler",
    ("04_logps", "data"): "section 10 batches pairs with `PreferenceCollator`; notebook 05 builds it, from these rows",
    ("06_runtime", "gpu"): "4-bit loading and vLLM are imported inside the functions that need them (GPU-only paths)",
    ("06_runtime", "online"): "the FSDP2 check samples with `online.sample_completions`, the loop that needs the gather",
    ("07_dpo_training", "evals"): "the slow toy experiment reports win rates with `evals`",
    ("09_eval", "plots"): "the win-rate chart of an evaluation is drawn with `plots.plot_win_rates`",
    ("10_online_dpo", "gpu"): "`use_vllm=True` imports `gpu.VLLMSampler` inside the function that builds it",
}


def module_numbers() -> dict[str, int]:
    nums = {}
    for nb in NOTEBOOKS:
        m = re.search(r"#\| default_exp (\w+)", nb.read_text())
        if m: nums[m.group(1)] = int(nb.name[:2])
    return nums


def cells(nb: Path):
    for c in json.loads(nb.read_text())["cells"]:
        if c["cell_type"] == "code": yield "".join(c["source"])


def test_numbers_are_unique():
    nums = [nb.name[:2] for nb in NOTEBOOKS]
    assert len(nums) == len(set(nums)), nums


def test_modules_import_only_earlier_notebooks():
    nums = module_numbers()
    bad = [(m, d) for m, n in nums.items() for d in sorted(top_imports(m)) if nums[d] >= n]
    assert not bad, f"module imports a module of a later notebook (module, imported): {bad}"


def test_teaching_cells_use_only_what_is_taught():
    nums, used = module_numbers(), set()
    for nb in NOTEBOOKS:
        n = int(nb.name[:2])
        for src in cells(nb):
            if src.lstrip().startswith("#| gpu"): continue
            mods = set(re.findall(r"(?:from|import) dpo_notes\.(\w+)", src)) | set(re.findall(r"dpo_notes\.(\w+)\.", src))
            used |= {(nb.stem, m) for m in mods if nums.get(m, -1) > n}
    new = sorted(used - set(FORWARD))
    stale = sorted(set(FORWARD) - used)
    assert not new, f"used before the notebook that teaches it (notebook, module): {new}"
    assert not stale, f"FORWARD lists forward uses that are gone: {stale}"
