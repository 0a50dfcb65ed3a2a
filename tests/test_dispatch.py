"""The parity tests (`-m parity`: ours vs TRL, fast vs plain, several processes vs one) under a second CPU dispatch.

PyTorch picks its CPU kernels by the instructions the CPU has (AVX-512, AVX2, or the scalar `default`). Different
kernels round differently, and a parity bound that holds under one kind is no evidence it holds under another
(`tests/parity.py` says why Adam amplifies rounding). The dispatch can be lowered, never raised
(`ATEN_CPU_CAPABILITY`), so a machine with AVX-512 checks both kinds: its own in the main run, AVX2 here, in a
subprocess. On an AVX2 machine that second run would repeat the first, so it is skipped, saying so.
`DPO_NOTES_PARITY_DISPATCH=default` (or `avx2`) forces the second run under that dispatch on any machine.
"""
import os, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
LOWER = {"AVX512": "avx2", "AVX512_BF16": "avx2", "AVX512_VNNI": "avx2"}   # this CPU's dispatch -> the one to add


def second_dispatch() -> str | None:
    "The dispatch for the second run, or None where it would repeat the first."
    forced = os.environ.get("DPO_NOTES_PARITY_DISPATCH")
    if forced: return forced
    if os.environ.get("ATEN_CPU_CAPABILITY"): return None        # this is already a lowered run
    return LOWER.get(torch.backends.cpu.get_cpu_capability())


@pytest.mark.parity
def test_dispatch_is_what_was_asked():
    "Under `ATEN_CPU_CAPABILITY` the kernels really are the lowered ones (else the second run proves nothing)."
    asked = os.environ.get("ATEN_CPU_CAPABILITY")
    if not asked: pytest.skip("no ATEN_CPU_CAPABILITY: the CPU's own dispatch")
    want = {"avx2": "AVX2", "default": "DEFAULT", "avx512": "AVX512"}[asked.lower()]
    assert torch.backends.cpu.get_cpu_capability() == want


def test_parity_tests_pass_under_a_lower_dispatch():
    lower = second_dispatch()
    if lower is None:
        pytest.skip(f"this CPU's dispatch is {torch.backends.cpu.get_cpu_capability()}: the parity tests ran under it "
                    "in the main run and a lower one is only forced with DPO_NOTES_PARITY_DISPATCH")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=lower)
    env.pop("DPO_NOTES_PARITY_DISPATCH", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "parity", "-p", "no:cacheprovider",
           "--durations=5", str(ROOT / "tests")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    print(r.stdout[-3000:])
    assert r.returncode == 0, f"parity tests under ATEN_CPU_CAPABILITY={lower}:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
