"""Every `#| gpu` cell of nbs/*.ipynb, dry-run on CPU (issue 13): so that a renamed function or argument breaks CI
instead of a learner's Colab session.

Cells are discovered when the tests are collected (a new `#| gpu` cell is covered without touching this file) and
parametrized by (notebook, cell index). Each runs in its notebook's namespace, after the earlier cells it reads names
from (tests/gpu_stand_ins.py: `dependency_slice`), with hub models/datasets swapped for tiny local stand-ins, CUDA
devices pointed at the CPU, and steps/samples shrunk (`shrink_source`, `dry_run`). A cell passes when it completes, or
when it stops at dpo_notes' own clear "needs CUDA / bitsandbytes / vLLM" error; any other exception fails it. A cell
whose dependency failed is skipped, naming that dependency. `DPO_NOTES_DRY_GPU=t4` answers `is_bf16_supported()`
with False (the fp16 branch of the cells) instead of an Ampere-like True.
"""
import os, traceback, warnings
from pathlib import Path
import pytest
from gpu_stand_ins import NBS, DependencyFailed, NotebookSession, directives, gpu_cells, is_expected_gpu_error

warnings.filterwarnings("ignore")
os.environ.setdefault("MPLBACKEND", "Agg")
CELLS = gpu_cells(NBS)
_SESSIONS = {}


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory):
    return tmp_path_factory.mktemp("gpu_dry_run")


def session(nb: str, root: Path) -> NotebookSession:
    if nb not in _SESSIONS:
        from dpo_notes.core import set_threads
        set_threads()
        _SESSIONS[nb] = NotebookSession(NBS / nb, root / nb.removesuffix(".ipynb"),
                                        bf16=os.environ.get("DPO_NOTES_DRY_GPU", "a100").lower() != "t4")
    return _SESSIONS[nb]


@pytest.fixture(autouse=True)
def _isolated_environ():
    "A cell may set launcher variables (vLLM's single-process set-up: RANK, WORLD_SIZE, MASTER_PORT): keep them in."
    from unittest import mock
    with mock.patch.dict(os.environ): yield


def test_cells_found():
    "The discovery itself: nbdev's `#| gpu` directive is what it looks for (a broken parser would test nothing)."
    assert len(CELLS) >= 20 and all(nb.endswith(".ipynb") for nb, _ in CELLS)


@pytest.mark.parametrize("nb,i", CELLS, ids=[f"{nb.removesuffix('.ipynb')}-cell{i}" for nb, i in CELLS])
def test_gpu_cell_dry_run(nb, i, scratch_root):
    s = session(nb, scratch_root)
    try: notes = s.prepare(i)
    except DependencyFailed as e:
        if s.full or "gpu" in directives(s.cells[e.i]): pytest.skip(f"{nb} cell {i}: {e}")
        s.reset_full()                  # an ordinary cell failed in the name slice: it needs an effect no name shows
        try: notes = s.prepare(i)
        except DependencyFailed as e2: pytest.skip(f"{nb} cell {i}: {e2} (also with every earlier cell run)")
    for n in notes: print(f"NOTE {nb}: {n}")         # runs on Colab (all cells), not in CI order: worth fixing
    try: s.run_cell(i)
    except Exception as e:
        if is_expected_gpu_error(e):                          # the GPU-only feature said clearly what it needs
            print(f"EXPECTED {nb} cell {i}: {type(e).__name__}: {e}"); return
        tb = "".join(traceback.format_exception(e)[-6:])
        pytest.fail(f"{nb} cell {i} failed on CPU stand-ins: {type(e).__name__}: {e}\n{tb}", pytrace=False)
