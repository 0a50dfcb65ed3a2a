"""DeepSpeed ZeRO-2 on CPU: `accelerate launch --config_file examples/accelerate_configs/zero2.yaml` with two processes
runs offline DPO (`train_dpo`) and online DPO (`train_online`) and both ranks end with identical weights.

Skipped unless deepspeed is installed (a dev requirement, pinned in settings.ini; not a dependency of the package). Install in a CPU-only venv with
    pip install torch==2.13.0 deepspeed        (deepspeed 0.19.8 tested; torch's CPU wheel, so no CUDA download)
DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`, also its auto-detected choice without CUDA) talks gloo when
oneccl_bindings_for_pytorch is absent; no intel_extension_for_pytorch or oneCCL is needed. On first use it JIT-builds
its small `deepspeed_shm_comm` op (needs g++ and ninja; cached under ~/.cache/torch_extensions).

This file is also the script the launch runs (`python tests/test_zero2.py OUT`). Two things it has to do that a GPU
run does not:
- `PartialState(backend="gloo")` before dpo_notes makes its `Accelerator`: without CUDA, accelerate 1.15 picks no
  backend for a DEEPSPEED launch, so each process believes it is rank 0 of 1 (DeepSpeed itself still initialises
  gloo with world size 2). The shared PartialState survives `AcceleratorState._reset_state()` in `make_accelerator`.
- `cfg.use_cpu=False`: `Accelerator(cpu=True)` ignores `ACCELERATE_USE_DEEPSPEED` and silently runs gloo DDP instead.
dpo_notes fills the DeepSpeed config's "auto" micro-batch size and clipping itself (`runtime.configure_deepspeed`:
it calls `prepare` without a dataloader) and accumulates with `runtime.accumulating`, which stops accelerate from
stepping the engine after every micro-batch; the offline run below uses 2 accumulated micro-batches per step.

Controls come from `tests/mp_step.py OUT --single` (see test_multiprocess.py): the same data as one big batch.
"""
from __future__ import annotations
import functools, json, os, socket, subprocess, sys, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "accelerate_configs" / "zero2.yaml"
sys.path.insert(0, str(ROOT / "tests"))


# ----------------------------------------------------------------------------------------------- the launched script
def _worker(out: Path):
    warnings.filterwarnings("ignore")
    import torch
    import mp_step                                    # tests/mp_step.py: data, shards, save(), constants
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType

    PartialState(backend="gloo")                      # see the module docstring
    engines = []
    _prepare = Accelerator.prepare

    def prepare(self, *args, **kwargs):                # records the engine, to check what ZeRO stage it runs
        res = _prepare(self, *args, **kwargs)
        engines.extend(r for r in (res if isinstance(res, tuple) else (res,)) if type(r).__name__ == "DeepSpeedEngine")
        return res
    Accelerator.prepare = prepare

    def engine_info(acc) -> dict:
        assert acc.distributed_type == DistributedType.DEEPSPEED, acc.distributed_type
        eng = engines[-1]
        part = sum(p.numel() for p in eng.optimizer.single_partition_of_fp32_groups)
        return {"world": acc.num_processes, "zero_stage": eng.zero_optimization_stage(),
                "optimizer": type(eng.optimizer).__name__, "partition_numel": part,
                "n_params": sum(p.numel() for p in eng.module.parameters() if p.requires_grad)}

    from dpo_notes import train, online as on
    from dpo_notes.runtime import weights_hash
    from dpo_notes.toy import load_toy, reward
    rank = PartialState().process_index
    if PartialState().num_processes != mp_step.WORLD: sys.exit(f"expected {mp_step.WORLD} processes")

    model, tok = load_toy("s")
    init = weights_hash(model)
    cfg = train.DPOConfig(output_dir=None, per_device_train_batch_size=mp_step.BS, gradient_accumulation_steps=mp_step.GA,
                          max_steps=mp_step.STEPS, learning_rate=mp_step.LR, shuffle=False, bf16=False, use_cpu=False,
                          disable_tqdm=True, logging_steps=1, seed=0)
    res = train.train_dpo(model, tok, mp_step.pairs(), cfg)
    mp_step.save(res.model, out, "offline_zero2", rank, init=init, engine=engine_info(Accelerator()),
                 loss=[h["loss"] for h in res.history if "loss" in h])

    model, tok = load_toy("s")
    init = weights_hash(model)
    acc = Accelerator()
    ocfg = on.OnlineDPOConfig(per_device_train_batch_size=mp_step.ONLINE_BS, max_steps=mp_step.ONLINE_STEPS,
                              max_new_tokens=8, learning_rate=mp_step.LR, bf16=False, use_cpu=False, disable_tqdm=True, seed=0)
    res = on.train_online(model, tok, mp_step.online_prompts(), reward, ocfg, accelerator=acc)
    mp_step.save(res.model, out, "online_zero2", rank, init=init, engine=engine_info(acc),
                 loss=[h["loss"] for h in res.history if "loss" in h])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    sys.exit(0)


# ------------------------------------------------------------------------------------------------------- the tests
import pytest
import torch

pytestmark = pytest.mark.parity     # every test here compares two implementations (tests/parity.py)

pytest.importorskip("deepspeed")


from conftest import dist, free_port, initial_flat, run_launch     # the DDP test's launcher and controls


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero2")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(Path(__file__).resolve()), str(out)]
    return run_launch(cmd, out, DS_ACCELERATOR="cpu")


@pytest.mark.parametrize("run", ["offline_zero2", "online_zero2"])
def test_zero2_engine_shards_optimizer_state(runs, run):
    "It really is ZeRO-2 over 2 ranks: each rank's fp32 optimizer partition holds about half the parameters."
    for r in (0, 1):
        e = runs(f"{run}_rank{r}")["engine"]
        assert e["world"] == 2 and e["zero_stage"] == 2 and e["optimizer"] == "DeepSpeedZeroOptimizer", e
        assert e["partition_numel"] < 0.6 * e["n_params"], e


@pytest.mark.parametrize("run", ["offline_zero2", "online_zero2"])
def test_zero2_ranks_identical_and_moved(runs, run):
    r0, r1 = runs(f"{run}_rank0"), runs(f"{run}_rank1")
    assert r0["init"] == r1["init"]
    assert r0["hash"] == r1["hash"] and torch.equal(r0["flat"], r1["flat"])
    assert r0["hash"] != r0["init"] and dist(r0["flat"], initial_flat()) > 0.1
    assert r0["loss"] == r1["loss"] and len(r0["loss"]) == 2      # metrics gathered over both ranks


def test_zero2_online_differs_from_each_rank_alone(runs):
    z = runs("online_zero2_rank0")["flat"]
    for r in (0, 1): assert dist(runs(f"online_alone{r}_rank0")["flat"], z) > 0.1


def test_zero2_offline_equals_one_big_batch(runs):
    """2 ranks x 2 accumulated micro-batches under ZeRO-2 = one process on all 8 pairs per step. Without
    `runtime.accumulating`, DeepSpeed stepped after every micro-batch: 4 updates instead of 2, 0.69 x off."""
    z, big = runs("offline_zero2_rank0")["flat"], runs("offline_bigbatch_rank0")["flat"]
    assert dist(z, big) < 1e-3 * dist(z, initial_flat()), (dist(z, big), dist(z, initial_flat()))
