"""A few offline and online DPO steps on the toy "s" model, run by `tests/test_multiprocess.py`.

Launched two ways:

    accelerate launch --config_file examples/accelerate_configs/ddp.yaml --num_processes 2 ... tests/mp_step.py OUT
        two processes (gloo DDP on CPU): each writes OUT/<run>_rank<r>.json (weight hashes, what data it saw) and
        OUT/<run>_rank<r>.pt (its final weights);
    python tests/mp_step.py OUT --single
        one process, the controls: the same offline run on each rank's shard of the data alone (no gradient
        sync), on both shards as one batch (what DDP should reproduce), and online runs on each rank's prompts alone.

Offline: 16 pairs, 2 pairs per micro-batch per process, 2 micro-batches per optimiser step (so `no_sync` is used),
2 steps, no shuffling. accelerate hands the loader's batches out round-robin: micro-batch j of rank r is batch
2j + r, i.e. pairs [(2j + r)·2, (2j + r + 1)·2). Online: 2 prompts per process per step, 2 steps, the toy reward.
Online, uneven: one step of 2 ranks x 2 accumulated micro-batches x 2 prompts whose judge fails some pairs (0, 2 | 2, 1
kept), against one process with all 8 prompts in one batch: every kept pair must weigh the same (issue 10, bug 2).
"""
from __future__ import annotations
import argparse, hashlib, json, os, sys, warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

from dpo_notes.core import set_threads

transformers.utils.logging.disable_progress_bar()

set_threads()

BS, GA, STEPS = 2, 2, 2              # offline: pairs per micro-batch per process, micro-batches per step, steps
WORLD = 2                            # the processes the DDP run uses (the controls rebuild its shards)
N_PAIRS = BS * GA * STEPS * WORLD    # 16: one epoch, every pair used once
LR = 1e-3                            # large, so a step moves the weights far beyond float noise
ONLINE_BS, ONLINE_STEPS = 2, 2


def tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def pairs() -> list[dict]:
    from dpo_notes.toy import load_toy_dataset
    return list(load_toy_dataset("prefs", "train"))[:N_PAIRS]


def shard(rows: list, rank: int, world: int = WORLD, bs: int = BS) -> list:
    "The rows DDP rank `rank` sees, in order: batches rank, rank + world, rank + 2·world, ... of size `bs`."
    return [r for b in range(rank, len(rows) // bs, world) for r in rows[b * bs:(b + 1) * bs]]


def offline(rows: list, bs: int, out: Path, name: str, rank: int):
    "`train_dpo` on `rows`; records the hash of every micro-batch it trains on (by wrapping `train.dpo_step`)."
    from dpo_notes import train
    from dpo_notes.runtime import weights_hash
    from dpo_notes.toy import load_toy
    model, tok = load_toy("s")
    init = weights_hash(model)
    seen, paths, step = [], [], train.dpo_step

    def recording_step(model, ref_model, batch, cfg, accelerator=None):
        seen.append(tensor_hash(batch["input_ids"])); paths.append(forward_path(model))
        return step(model, ref_model, batch, cfg, accelerator)

    train.dpo_step = recording_step          # train_dpo looks dpo_step up in its module at call time
    try:
        cfg = train.DPOConfig(output_dir=None, per_device_train_batch_size=bs, gradient_accumulation_steps=GA,
                              max_steps=STEPS, learning_rate=LR, shuffle=False, bf16=False, use_cpu=True,
                              disable_tqdm=True, logging_steps=1, seed=0)
        res = train.train_dpo(model, tok, rows, cfg)
    finally:
        train.dpo_step = step
    save(res.model, out, name, rank, init=init, batches=seen, paths=paths, loss=[h["loss"] for h in res.history if "loss" in h])


def online(prompts: list, out: Path, name: str, rank: int, accelerator=None, uneven: bool = False, bs: int = ONLINE_BS):
    """`train_online` on `prompts` with the toy reward; records the prompts, completions and kept pairs of every
    micro-batch. `uneven`: one step of deterministic completions (`fake_sample_completions`) judged by a reward that
    cannot score the prompts of `UNEVEN_DROP`, so micro-batches and ranks keep different numbers of pairs."""
    from dpo_notes import online as on
    from dpo_notes.runtime import weights_hash
    from dpo_notes.toy import load_toy, reward
    model, tok = load_toy("s")
    init = weights_hash(model)
    seen = []

    def recording_loss(model, ref_model, batch, cfg, epoch=0.0, denominator=None):
        seen.append({"prompts": batch["prompts"], "completions": batch["texts"], "kept": batch["kept"], "path": forward_path(model)})
        return on.pairs_loss(model, ref_model, batch, cfg, epoch, denominator)

    judge, kw = reward, dict(max_steps=ONLINE_STEPS)
    if uneven:
        on.sample_completions = fake_sample_completions           # this process only: sampling without randomness
        drop = set(uneven_drop(prompts))
        judge = lambda p, c: None if p in drop else reward(p, c)
        kw = dict(max_steps=1, gradient_accumulation_steps=GA if bs == ONLINE_BS else 1, max_grad_norm=0)
    cfg = on.OnlineDPOConfig(per_device_train_batch_size=bs, max_new_tokens=8, learning_rate=LR, bf16=False, use_cpu=True,
                             disable_tqdm=True, seed=0, **kw)
    res = on.train_online(model, tok, prompts, judge, cfg, step_fn=on.OnlineMethod("recording", on.collect_pairs, recording_loss),
                          accelerator=accelerator)
    train = [h for h in res.history if "loss" in h]
    save(res.model, out, name, rank, init=init, samples=seen, loss=[h["loss"] for h in train],
         grad_norm=[h["grad_norm"] for h in train])


def fake_sample_completions(model, prompt_ids, prompt_mask, *, num_samples=2, max_new_tokens=8, eos_ids=(), pad_token_id=0, **_):
    "Deterministic completions (no RNG, never an eos): a function of each prompt's real tokens and the sample index."
    from dpo_notes.runtime import cut_at_eos
    words = [i for i in range(4, 60) if i not in eos_ids and i != pad_token_id]
    rows = [[words[(int(prompt_ids[r][prompt_mask[r].bool()].sum()) * 7 + s * 13 + 5 * t) % len(words)] for t in range(max_new_tokens)]
            for s in range(num_samples) for r in range(prompt_ids.shape[0])]
    return cut_at_eos(torch.tensor(rows, device=prompt_ids.device), list(eos_ids), pad_token_id)


def uneven_drop(prompts: list) -> list:
    """The prompts whose pairs fail in the uneven run: both of rank 0's first micro-batch and one of rank 1's second, so
    the four micro-batches keep 0, 2 | 2, 1 pairs (N = 5)."""
    from dpo_notes.online import prompt_batch
    mb = lambda j, r: [prompts[i] for i in prompt_batch(len(prompts), ONLINE_BS, j, 0, r, WORLD)[0]]
    return mb(0, 0) + mb(1, 1)[:1]


def forward_path(model) -> list:
    "What the trainer is handed (the DDP wrapper under a launch) and whether the lean head and packing work through it."
    from dpo_notes.logps import decoder_and_head
    from dpo_notes.logps import can_pack
    return [type(model).__name__, decoder_and_head(model) is not None, can_pack(model)]


def save(model, out: Path, name: str, rank: int, **info):
    from dpo_notes.runtime import weights_hash
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(sd, out / f"{name}_rank{rank}.pt")
    (out / f"{name}_rank{rank}.json").write_text(json.dumps({"hash": weights_hash(model), **info}))


def online_prompts() -> list[str]:
    from dpo_notes.toy import load_toy_dataset
    return [r["prompt"] for r in load_toy_dataset("prompts", "train")][:ONLINE_BS * ONLINE_STEPS * WORLD]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--single", action="store_true", help="run the single-process controls instead of the DDP runs")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rows, prompts = pairs(), online_prompts()
    if a.single:
        for r in range(WORLD): offline(shard(rows, r), BS, a.out, f"offline_shard{r}", 0)
        offline(rows, BS * WORLD, a.out, "offline_bigbatch", 0)      # both ranks' micro-batches as one
        from dpo_notes.online import prompt_batch
        for r in range(WORLD):                                       # the prompts rank r trains on, alone
            own = [prompts[i] for s in range(ONLINE_STEPS)
                   for i in prompt_batch(len(prompts), ONLINE_BS, s, 0, r, WORLD)[0]]
            online(own, a.out, f"online_alone{r}", 0)
        online(prompts, a.out, "online_uneven_onebatch", 0, uneven=True, bs=ONLINE_BS * GA * WORLD)   # all 8 in one batch
        return
    from accelerate import Accelerator
    acc = Accelerator(cpu=True)
    if acc.num_processes != WORLD:
        sys.exit(f"expected {WORLD} processes, got {acc.num_processes}: launch with accelerate launch --num_processes {WORLD}")
    offline(rows, BS, a.out, "offline_ddp", acc.process_index)
    online(prompts, a.out, "online_ddp", acc.process_index, accelerator=acc)
    online(prompts, a.out, "online_uneven_ddp", acc.process_index, accelerator=acc, uneven=True)


if __name__ == "__main__":
    main()
