"""`benchmarks/gpu_bench.py` runs end to end on CPU (`--device cpu --tiny`) and prints the table and ratios it promises;
its GPU peak-FLOP/s table resolves the device names CUDA reports. About 20-30 s on CPU."""
import json, math, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "gpu_bench.py"
sys.path.insert(0, str(BENCH.parent))
from gpu_bench import COLUMNS, peak_tflops  # noqa: E402


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100-PCIE-40GB", 312), ("Tesla T4", 65), ("NVIDIA L4", 121), ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 4090", None)])
def test_peak_table(name, tflops):
    assert peak_tflops(name) == tflops


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", DPO_NOTES_THREADS="1", CUDA_VISIBLE_DEVICES="")
    # --peak-tflops: a made-up CPU peak, so the MFU column is filled and its formula can be checked
    r = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--steps", "2", "--peak-tflops", "0.05",
                        "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout, json.loads(out.read_text())


def test_table_has_the_columns_and_rows(smoke):
    stdout, _ = smoke
    lines = stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.split()[:2] == ["bench", "impl"])
    assert lines[header].split() == COLUMNS
    assert COLUMNS == ["bench", "impl", "median_step_s", "tokens_per_s", "prompts_per_s", "MFU", "peak_mem_GB", "steps"]
    rows = [l.split() for l in lines[header + 1:header + 5]]
    assert [r[:2] for r in rows] == [["offline", "ours"], ["offline", "trl"], ["online", "ours"], ["online", "trl"]]
    assert all(len(r) == len(COLUMNS) for r in rows)
    assert all(r[-2] == "n/a" for r in rows)                 # no peak memory counter on CPU
    assert rows[0][5].endswith("%") and rows[2][5] == "n/a"  # MFU: offline only
    assert any(l.startswith("ours/TRL offline: time per step") for l in lines)
    assert any(l.startswith("ours/TRL online: time per step") for l in lines)


def test_numbers_are_consistent(smoke):
    _, res = smoke
    a, N, peak = res["args"], res["params"], res["peak_tflops"] * 1e12
    tokens = 2 * a["batch"] * (a["prompt_len"] + a["completion_len"] + 1)
    assert a["batch"] == 2 and a["prompt_len"] == a["completion_len"] == 8 and a["steps"] == 2
    for row in res["rows"]:
        t = row["median_step_s"]
        assert 0 < t < 60 and row["steps"] == 2
        assert len(res["step_times"][f"{row['bench']}/{row['impl']}"]) == 2
        if row["bench"] == "offline":
            assert math.isclose(row["tokens_per_s"], tokens / t)
            assert math.isclose(row["MFU"], 8 * N * tokens / t / peak)
            assert math.isnan(row["prompts_per_s"])
        else:
            assert math.isclose(row["prompts_per_s"], a["batch"] / t)
            assert math.isclose(row["tokens_per_s"], 2 * a["batch"] * a["completion_len"] / t)
            assert math.isnan(row["MFU"])
    for bench in ("offline", "online"):
        o, t = (next(r for r in res["rows"] if r["bench"] == bench and r["impl"] == i) for i in ("ours", "trl"))
        assert math.isclose(res["ratios"][bench]["time"], o["median_step_s"] / t["median_step_s"])
