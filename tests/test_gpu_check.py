"""`benchmarks/gpu_check.sh --cpu`: the prepared device check, dry-run on CPU (each step shrunk to seconds), so that a
renamed flag or file breaks CI rather than the few minutes a GPU is lent for. About 20 s."""
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", DPO_NOTES_THREADS="1", CUDA_VISIBLE_DEVICES="", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    steps = [l.split()[0] for l in (tmp_path / "times.txt").read_text().splitlines()]
    assert steps == ["bench", "online", "cells"], steps
    assert (tmp_path / "bench.json").exists() and (tmp_path / "online" / "adapter_model.safetensors").exists()
    assert "gpu_check: done" in r.stdout
