"""Data parallelism on CPU: two processes under `accelerate launch` (gloo DDP) train the toy "s" model on different
data, yet end with identical weights; the same steps without gradient sync end with different ones.

The script that trains is `tests/mp_step.py`; one launch runs offline DPO (`dpo_notes.train.train_dpo`, with
gradient accumulation, so `no_sync` is exercised) then online DPO (`dpo_notes.online.train_online`) in both processes.
A single-process run of the same script gives the controls: each rank's data trained on alone (what the ranks would
end with without gradient sync), and both ranks' micro-batches as one batch (what synchronised DDP must reproduce:
the mean of two per-rank mean gradients is the gradient of the mean over both).

Why `--config_file examples/accelerate_configs/ddp.yaml` and not `--cpu`: in accelerate 1.15 `accelerate launch --cpu
--num_processes 2` starts ONE process (its simple launcher only spawns several through `mpirun --hostfile`); the
multi-GPU launcher (torchrun) starts two, and on a machine without CUDA `Accelerator` picks gloo (MULTI_CPU).
`mp_step.py` exits with an error if it finds itself alone, so that mistake cannot pass silently.
Run time: about 40 s on 2 busy cores (three processes, one thread each).
"""

import pytest
import torch
from conftest import dist, initial_flat, launch_cmd, run_launch     # the launcher and its controls, shared with test_zero2

pytestmark = pytest.mark.parity     # every test here compares two implementations (tests/parity.py)

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Run the two-process launch and the single-process controls side by side; return a loader of their outputs."
    out = tmp_path_factory.mktemp("mp")
    return run_launch(launch_cmd(out), out)


def test_offline_ranks_identical_and_moved(runs):
    r0, r1 = runs("offline_ddp_rank0"), runs("offline_ddp_rank1")
    assert r0["init"] == r1["init"]                               # both started from the same checkpoint
    assert r0["hash"] == r1["hash"]                               # bit-identical after the steps: gradients all-reduced
    assert torch.equal(r0["flat"], r1["flat"])
    assert r0["hash"] != r0["init"] and dist(r0["flat"], initial_flat()) > 0.1    # and the steps did move them
    assert len(r0["batches"]) == len(r1["batches"]) == 4          # 2 steps x 2 accumulated micro-batches each
    # through the DDP wrapper, with the lean LM head and prompt-once packing (not the full-logits fallback)
    assert all(p == ["DistributedDataParallel", True, True] for p in r0["paths"] + r1["paths"]), r0["paths"]
    assert not set(r0["batches"]) & set(r1["batches"])            # every micro-batch differed between the ranks
    assert r0["loss"] == r1["loss"] and len(r0["loss"]) == 2      # logged metrics are gathered over both ranks


def test_offline_ddp_equals_one_big_batch(runs):
    "Synchronised DDP on 2 ranks x B pairs = one process on the 2B pairs as one batch (up to float rounding)."
    ddp, big, init = runs("offline_ddp_rank0")["flat"], runs("offline_bigbatch_rank0")["flat"], initial_flat()
    moved = dist(ddp, init)
    assert dist(ddp, big) < 1e-3 * moved, (dist(ddp, big), moved)   # measured: 3e-5 x; Adam amplifies tiny-gradient noise


def test_offline_without_sync_differs(runs):
    "The control: each rank's shard trained alone (no all-reduce) ends elsewhere, and not where DDP ends."
    s0, s1 = runs("offline_shard0_rank0"), runs("offline_shard1_rank0")
    ddp = runs("offline_ddp_rank0")
    assert s0["batches"] == ddp["batches"]                        # the shard runs really saw rank 0's / rank 1's data
    assert s1["batches"] == runs("offline_ddp_rank1")["batches"]
    assert s0["hash"] != s1["hash"]
    moved = dist(ddp["flat"], initial_flat())
    for s in (s0, s1):
        assert dist(s["flat"], ddp["flat"]) > 0.3 * moved         # measured: ~0.9 x


def test_online_ranks_identical_on_different_prompts(runs):
    r0, r1 = runs("online_ddp_rank0"), runs("online_ddp_rank1")
    assert r0["hash"] == r1["hash"] and torch.equal(r0["flat"], r1["flat"])
    assert r0["hash"] != r0["init"] and dist(r0["flat"], initial_flat()) > 0.1
    p0 = {p for s in r0["samples"] for p in s["prompts"]}
    p1 = {p for s in r1["samples"] for p in s["prompts"]}
    assert len(p0) == len(p1) == 4 and not p0 & p1                # each rank trained on its own prompts
    assert all(s["path"] == ["DistributedDataParallel", True, True] for s in r0["samples"] + r1["samples"])
    assert r0["loss"] == r1["loss"]                                # metrics averaged over the ranks


def test_online_without_sync_differs(runs):
    a0, a1, ddp = runs("online_alone0_rank0"), runs("online_alone1_rank0"), runs("online_ddp_rank0")
    assert a0["hash"] != a1["hash"] and dist(a0["flat"], a1["flat"]) > 0.1
    assert dist(a0["flat"], ddp["flat"]) > 0.1 and dist(a1["flat"], ddp["flat"]) > 0.1


def test_online_kept_pairs_weigh_the_same_across_ranks_and_micro_batches(runs):
    """Issue 10, bug 2: pairs dropped unevenly (0 and 2 kept on rank 0's micro-batches, 2 and 1 on rank 1's) must give
    the gradient of the mean over the 5 kept pairs: what one process with the 8 prompts in one batch computes.
    (A per-micro-batch mean, then / accumulation, then the ranks' average, gave a grad norm off by tens of percent.)"""
    r0, r1, one = runs("online_uneven_ddp_rank0"), runs("online_uneven_ddp_rank1"), runs("online_uneven_onebatch_rank0")
    assert [s["kept"] for s in r0["samples"]] == [0, 2] and [s["kept"] for s in r1["samples"]] == [2, 1]
    assert sum(s["kept"] for s in one["samples"]) == 5
    assert r0["grad_norm"] == r1["grad_norm"] and r0["loss"] == r1["loss"]
    g, want = r0["grad_norm"][0], one["grad_norm"][0]
    assert abs(g - want) < 1e-4 * want, (g, want)
    assert abs(r0["loss"][0] - one["loss"][0]) < 1e-5, (r0["loss"], one["loss"])
