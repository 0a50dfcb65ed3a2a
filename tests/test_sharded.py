"""Sharded training on CPU ranks: `accelerate launch --config_file examples/accelerate_configs/<strategy>.yaml
--num_processes 2` of `tests/sharded_run.py` for DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 (gloo; the configs are the
GPU ones, unedited: `runtime.make_accelerator` sees there is no CUDA), against one process on the same global batch.

One launch per strategy runs every check of that strategy (offline DPO with LoRA and full fine-tuning, a resume,
online DPO fully fine-tuned, XPO with LoRA, sampling where one rank stops at once); the tests read what it wrote.
The launches run one after another, with a 60 s collective timeout inside (a hang fails in a minute) and a
300 s limit each. A simulated 2-machine launch (two `accelerate launch` calls on 127.0.0.1, one process each)
runs offline DPO with LoRA under FSDP2 (the torchrun launcher; DeepSpeed's multi-node launch goes through pdsh).

Bounds (tests/parity.py): weights within `WEIGHT_REL` of how far training moved them; sharded online runs against
DDP the same (the same seeds draw the same tokens while the weights agree to rounding).
"""
from __future__ import annotations
import functools, json, os, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from parity import WEIGHT_REL, assert_weights_moved_alike
from conftest import free_port
from dpo_notes.runtime import LAUNCHER_VARS

pytestmark = pytest.mark.parity
pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "sharded_run.py"
CONFIGS = ROOT / "examples" / "accelerate_configs"
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp2")
SHARDED = ("zero2", "zero3", "fsdp2")


def _env() -> dict:
    inherited = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith(("ACCELERATE_", "TORCHELASTIC_"))}
    return dict(inherited, OMP_NUM_THREADS="1", DPO_NOTES_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def launch(config: str, out: Path, tag: str, *extra: str, timeout: int = 300) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", *extra, str(SCRIPT), str(out), tag]
    if "--num_machines" not in extra: cmd[cmd.index("--mixed_precision"):cmd.index("--mixed_precision")] = [
        "--num_machines", "1", "--main_process_port", str(free_port())]
    return subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, what: str, timeout: int = 300) -> float:
    t = time.perf_counter()
    try: log, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill(); log, _ = p.communicate()
        pytest.fail(f"{what} did not finish in {timeout} s:\n" + log[-3000:])
    assert p.returncode == 0, f"{what} failed:\n" + log[-5000:]
    return time.perf_counter() - t


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    "Every launch, one after another (each is two processes on the two cores), and the single-process controls."
    d = Path(os.environ["DPO_NOTES_SHARDED_OUT"]) if os.environ.get("DPO_NOTES_SHARDED_OUT") else tmp_path_factory.mktemp("sharded")
    if (d / "done").exists(): return d
    single = subprocess.run([sys.executable, str(SCRIPT), str(d), "single"], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    times = {}
    for s in STRATEGIES: times[s] = finish(launch(s, d, s), f"the {s} launch")
    port = str(free_port())
    nodes = [launch("fsdp2", d, "multinode", "--num_machines", "2", "--machine_rank", str(r), "--main_process_ip", "127.0.0.1",
                    "--main_process_port", port) for r in (0, 1)]
    times["multinode"] = max(finish(p, f"machine {r} of the 2-machine launch") for r, p in enumerate(nodes))
    (d / "launch_times.json").write_text(json.dumps(times)); (d / "done").write_text("")
    return d


def load(out: Path, name: str) -> tuple[dict, dict]:
    return json.loads((out / f"{name}.json").read_text()), torch.load(out / f"{name}.pt")


@functools.cache
def initial(lora: bool) -> dict:
    "The starting weights, under the names the runs save (LoRA: the peft model's, adapters at their initial values)."
    from dpo_notes.toy import load_toy
    from dpo_notes.runtime import lora_config
    from sharded_run import LORA
    m = load_toy("s")[0]
    if lora:
        from peft import get_peft_model
        torch.manual_seed(0)
        m = get_peft_model(m, lora_config(**LORA))
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def lora_only(sd: dict) -> dict: return {k: v for k, v in sd.items() if "lora_" in k}


def assert_frozen_split(out: Path, strategy: str, run: str, key: str = "ref_numel"):
    """A frozen model (reference, reward model) prepared by `runtime.prepare_frozen_model`: under ZeRO-3 and FSDP2 each
    rank stores about half of it (FSDP2 pads dim 0 to split it), the two halves adding up to the whole; whole elsewhere."""
    (l0, whole), (l1, whole1) = (json.loads((out / f"{strategy}_{run}_rank{r}.json").read_text())[key] for r in (0, 1))
    assert whole == whole1 > 0
    if strategy in ("zero3", "fsdp2"):
        assert 0.45 * whole < l0 < 0.55 * whole and 0.45 * whole < l1 < 0.55 * whole, (key, l0, l1, whole)
        assert whole <= l0 + l1 <= 1.01 * whole, (key, l0, l1, whole)
    else:
        assert l0 == l1 == whole, (key, l0, l1, whole)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_offline_equals_one_process(out, strategy, kind):
    """2 ranks x 2 accumulated micro-batches of 2 pairs = one process on 4 pairs x 2 micro-batches, for every strategy;
    ranks end identical. LoRA: the adapter (B starts at 0, so its movement is the whole adapter's); full: every weight."""
    i0, w0 = load(out, f"{strategy}_offline_{kind}_rank0")
    i1, w1 = load(out, f"{strategy}_offline_{kind}_rank1")
    _, big = load(out, f"single_offline_{kind}_rank0")
    assert w0.keys() == big.keys() and all(w0[k].shape == big[k].shape for k in big), "gathered weights are whole"
    for k in w0: assert torch.equal(w0[k], w1[k]), k
    pick = lora_only if kind == "lora" else (lambda sd: sd)
    start = {k: v for k, v in initial(kind == "lora").items() if k in pick(big)}
    assert_weights_moved_alike(pick(w0), pick(big), start, what=f"{strategy} {kind} vs one process")
    assert i0["loss"] == i1["loss"] and len(i0["loss"]) == 2
    want_lean = strategy in ("ddp", "zero2")               # the lean head reads whole weights only
    assert set(i0["lean"]) == {want_lean}, i0["lean"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_separate_reference_model_equals_one_process(out, strategy):
    """Full fine-tuning against a `ref_model` passed in (the starting weights, loaded again): as one process with its frozen
    copy, and as DDP; under ZeRO-3/FSDP2 the reference is sharded as TRL's `prepare_deepspeed` shards it."""
    _, w = load(out, f"{strategy}_offline_sepref_full_rank0")
    _, big = load(out, "single_offline_full_rank0")
    assert_weights_moved_alike(w, big, initial(False), what=f"{strategy} separate reference")
    if strategy != "ddp":
        assert_weights_moved_alike(w, load(out, "ddp_offline_sepref_full_rank0")[1], initial(False), what=f"{strategy} vs DDP")
    assert_frozen_split(out, strategy, "offline_sepref_full")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_trdpo_reference_sync_equals_one_process(out, strategy, kind):
    """TR-DPO, synced every step: the "ref" adapter (LoRA; written into sharded weights through
    `runtime.writable_weights`) or the separate frozen copy (full) ends where one process's does, and it moved."""
    _, w0 = load(out, f"{strategy}_offline_trdpo_{kind}_rank0")
    _, w1 = load(out, f"{strategy}_offline_trdpo_{kind}_rank1")
    _, big = load(out, f"single_offline_trdpo_{kind}_rank0")
    for k in w0: assert torch.equal(w0[k], w1[k]), k
    if kind == "lora":
        ref = lambda sd: {k: v for k, v in sd.items() if "lora_" in k and ".ref." in k}
        start = {k.replace(".default.", ".ref."): v for k, v in initial(True).items() if "lora_" in k}
        assert len(ref(w0)) == len(start) > 0
        assert_weights_moved_alike(ref(w0), ref(big), start, what=f"{strategy} TR-DPO ref adapter")
    else:
        r0, r1, rb, rd = (torch.load(out / f"{n}_offline_trdpo_full_ref_rank{r}.pt") for n, r in
                          ((strategy, 0), (strategy, 1), ("single", 0), ("ddp", 0)))
        for k in r0: assert torch.equal(r0[k], r1[k]), k
        assert_weights_moved_alike(r0, rb, initial(False), what=f"{strategy} TR-DPO reference copy")
        assert_weights_moved_alike(r0, rd, initial(False), what=f"{strategy} TR-DPO reference copy vs DDP")
        assert_frozen_split(out, strategy, "offline_trdpo_full")     # synced into its shards (ZeRO-3, FSDP2)
    pick = lora_only if kind == "lora" else (lambda sd: sd)
    start = {k: v for k, v in initial(kind == "lora").items() if k in pick(big)}
    assert_weights_moved_alike({k: v for k, v in pick(w0).items() if k in start}, {k: v for k, v in pick(big).items() if k in start}, start,
                               what=f"{strategy} TR-DPO policy")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_saved_adapter_is_whole_and_reloads_to_the_same_logps(out, strategy):
    "The adapter written under sharding holds every tensor whole, and a fresh model with it gives the run's log-probs."
    from peft import PeftModel
    from dpo_notes.logps import concatenated_forward
    from dpo_notes.toy import load_toy
    from sharded_run import probe_batch
    info, w = load(out, f"{strategy}_offline_lora_rank0")
    base, tok = load_toy("s")
    m = PeftModel.from_pretrained(base, info["saved"]).eval()
    got = lora_only({k: v for k, v in m.state_dict().items()})
    assert len(got) == len(lora_only(w)) > 0 and all(v.numel() > 0 for v in got.values())
    with torch.no_grad(): lp = concatenated_forward(m, probe_batch(tok))
    want = torch.tensor(info["probe"])
    torch.testing.assert_close(torch.stack([lp["chosen_logps"], lp["rejected_logps"]]), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resume_equals_no_interruption(out, strategy):
    "Checkpoint after step 1 (every rank's optimizer shard), a fresh run resumed from it: it ends where the whole run ends."
    iw, whole = load(out, f"{strategy}_resume_whole_rank0")
    ir, resumed = load(out, f"{strategy}_resume_resumed_rank0")
    start = {k: v for k, v in initial(True).items() if "lora_" in k}
    assert_weights_moved_alike(lora_only(resumed), lora_only(whole), start, rel=1e-6, what=f"{strategy} resumed")
    assert ir["loss"] == iw["loss"]
    if strategy in SHARDED: assert ("deepspeed" if strategy.startswith("zero") else "fsdp2") in iw["files"], iw["files"]


@pytest.mark.parametrize("strategy", SHARDED)
@pytest.mark.parametrize("run", ["online_full", "xpo_lora"])
def test_online_sharded_ranks_identical_and_equal_to_ddp(out, strategy, run):
    i0, w0 = load(out, f"{strategy}_{run}_rank0")
    i1, w1 = load(out, f"{strategy}_{run}_rank1")
    _, ddp = load(out, f"ddp_{run}_rank0")
    for k in w0: assert torch.equal(w0[k], w1[k]), k
    pick = lora_only if run.endswith("lora") else (lambda sd: sd)
    start = {k: v for k, v in initial(run.endswith("lora")).items() if k in pick(ddp)}
    assert_weights_moved_alike(pick(w0), pick(ddp), start, what=f"{strategy} {run} vs DDP")
    assert i0["loss"] == i1["loss"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_online_reward_model_and_reference_split_like_the_policy(out, strategy):
    """online_full scores with TRL's reward_funcs (the toy reward + a sequence-classification reward model) against a frozen
    copy of the policy: under ZeRO-3/FSDP2 both are sharded (`runtime.prepare_frozen_model`), and the run equals DDP
    (`test_online_sharded_ranks_identical_and_equal_to_ddp`)."""
    assert_frozen_split(out, strategy, "online_full", "rm_numel")
    assert_frozen_split(out, strategy, "online_full", "ref_numel")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sampling_where_one_rank_stops_first_returns(out, strategy):
    "Rank 0 stops at its first token, rank 1 runs to max_new_tokens, lean and generate: both came back (no hang)."
    r0, r1 = (json.loads((out / f"{strategy}_early_stop_rank{r}.json").read_text()) for r in (0, 1))
    for b in ("lean", "hf"):
        assert r0[b]["width"] == 1 and r1[b]["width"] == 8, (b, r0, r1)


def test_two_machines_equal_one(out):
    "Two `accelerate launch` calls (--num_machines 2, machine_rank 0 and 1, 127.0.0.1), FSDP2: as one machine's 2 ranks."
    _, a = load(out, "multinode_offline_lora_rank0")
    _, b = load(out, "multinode_offline_lora_rank1")
    _, one = load(out, "fsdp2_offline_lora_rank0")
    for k in a: assert torch.equal(a[k], b[k]), k
    start = {k: v for k, v in initial(True).items() if "lora_" in k}
    assert_weights_moved_alike(lora_only(a), lora_only(one), start, what="2 machines vs 1")
