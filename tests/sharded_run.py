"""The script `tests/test_sharded.py` launches: one launch per strategy runs every check of that strategy and writes
what each rank ended with, so the tests only read files.

    accelerate launch --config_file examples/accelerate_configs/<ddp|zero2|zero3|fsdp2>.yaml --num_processes 2 \\
        tests/sharded_run.py OUT <strategy>
        two CPU processes (gloo; dpo_notes sees there is no CUDA: `runtime.make_accelerator`). Per rank r, into OUT:
        <strategy>_<run>_rank<r>.pt   the whole weights each rank ends with (`runtime.full_state_dict`), and
        <strategy>_<run>_rank<r>.json what the run logged (losses, log-probs, sampled lengths, which path ran).
    python tests/sharded_run.py OUT single
        one process, the controls: the same offline runs with both ranks' micro-batches as one batch.

Runs (toy "s", fp32, 2 optimizer steps each):
- offline_lora / offline_full: `train_dpo`, 2 pairs per micro-batch x 2 accumulated micro-batches x 2 ranks; LoRA also
  saves its adapter (output_dir) and records the log-probs of a fixed batch after training, for the reload check;
- offline_trdpo_lora / offline_trdpo_full: TR-DPO (sync every step, alpha 0.6) into the "ref" adapter / into a
  separate frozen copy, whose weights are saved too (_ref_rank<r>.pt); offline_sepref_full: full fine-tuning against a
  separate reference model passed in (`ref_model=`), which must train as the frozen copy does (offline_full); both
  separate references record [stored on this rank, whole] parameters (`ref_numel`: ZeRO-3/FSDP2 shard them,
  `runtime.prepare_frozen_model`);
- resume_lora: the offline LoRA run again, checkpointing after step 1, then a fresh run resumed from that checkpoint;
- online_full (reference: a frozen copy; judged by reward_funcs = the toy reward + a small sequence-classification
  reward model, both frozen models' `ref_numel`/`rm_numel` recorded) and xpo_lora (reference: the adapter switched
  off, which also samples): 2 prompts per rank per step, 8 new tokens;
- <strategy>_memory (and `memory`, one process without a launch): one AdamW step fully fine-tuned, then what each
  rank stores (`runtime.resident_bytes`), for notebook 06's table;
- early_stop: sampling where rank 0 stops at its first token (every token is an eos there) and rank 1 runs to
  max_new_tokens, with both backends (lean and `generate`): it must return, not hang (a 60 s collective timeout).
"""
from __future__ import annotations
import datetime, json, os, sys, time, warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import transformers

from dpo_notes.core import set_threads

transformers.utils.logging.disable_progress_bar()
set_threads()

BS, GA, STEPS, WORLD, LR = 2, 2, 2, 2, 1e-3      # offline: as tests/mp_step.py
N_PAIRS = BS * GA * STEPS * WORLD
ONLINE_BS, ONLINE_STEPS, NEW = 2, 2, 8
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0)


def pairs() -> list[dict]:
    from dpo_notes.toy import load_toy_dataset
    return list(load_toy_dataset("prefs", "train"))[:N_PAIRS]


def prompts() -> list[str]:
    from dpo_notes.toy import load_toy_dataset
    return [r["prompt"] for r in load_toy_dataset("prompts", "train")][:ONLINE_BS * ONLINE_STEPS * WORLD]


def probe_batch(tok):
    "A fixed preference batch (the first 4 pairs) whose log-probs are recorded after training."
    from dpo_notes.data import PreferenceCollator
    from dpo_notes.train import prepare_examples
    return PreferenceCollator.from_tokenizer(tok)(prepare_examples(pairs()[:4], tok))


def write(out: Path, name: str, rank: int, model, **info):
    from dpo_notes.runtime import full_state_dict
    sd = full_state_dict(model, everywhere=True)
    torch.save({k: v.float() for k, v in sd.items()}, out / f"{name}_rank{rank}.pt")
    (out / f"{name}_rank{rank}.json").write_text(json.dumps(info))


def numel(model) -> list[int]:
    "[what this rank stores, the whole model] in parameters (fp32): sharded by `runtime.prepare_frozen_model` or not."
    from dpo_notes.runtime import resident_bytes
    whole = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())   # a DTensor's numel is the whole one
    return [resident_bytes(model)["weights"] // 4, whole]


def reward_model(tok):
    "A small sequence-classification reward model on the toy vocabulary (seeded: the same on every rank and launch)."
    from transformers import LlamaConfig, LlamaForSequenceClassification
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_labels=1, pad_token_id=tok.pad_token_id)).eval()


def dpo_cfg(bs, **kw):
    from dpo_notes.train import DPOConfig
    return DPOConfig(**{**dict(output_dir=None, per_device_train_batch_size=bs, gradient_accumulation_steps=GA,
                               max_steps=STEPS, learning_rate=LR, shuffle=False, bf16=False, use_cpu=False,
                               disable_tqdm=True, logging_steps=1, seed=0), **kw})


def offline(out: Path, tag: str, bs: int, rank: int, lora: bool, trdpo: bool = False, separate_ref: bool = False):
    from dpo_notes import train
    from dpo_notes.logps import concatenated_forward
    from dpo_notes.runtime import full_state_dict, lora_config
    from dpo_notes.toy import load_toy
    model, tok = load_toy("s")
    paths = []
    step = train.dpo_step
    def recording(model, ref_model, batch, cfg, accelerator=None):
        from dpo_notes.logps import decoder_and_head
        paths.append(decoder_and_head(model) is not None); return step(model, ref_model, batch, cfg, accelerator)
    train.dpo_step = recording
    run = ("trdpo_" if trdpo else "sepref_" if separate_ref else "") + ("lora" if lora else "full")
    ref = load_toy("s")[0] if separate_ref else None         # a separate reference model, passed in
    save = out / f"{tag}_{run}_saved"
    sync = dict(sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.6) if trdpo else {}
    try: res = train.train_dpo(model, tok, pairs(), dpo_cfg(bs, output_dir=str(save) if lora and not trdpo else None, **sync),
                               peft_config=lora_config(**LORA) if lora else None, ref_model=ref)
    finally: train.dpo_step = step
    info = dict(loss=[h["loss"] for h in res.history if "loss" in h], lean=paths)
    if res.ref_model is not None:   # a separate reference (passed in, or TR-DPO's copy): sharded as the policy is
        info["ref_numel"] = numel(res.ref_model)
    if trdpo and not lora:          # the separate reference TR-DPO moved, gathered whole
        sd = full_state_dict(res.ref_model, everywhere=True)
        torch.save({k: v.float() for k, v in sd.items()}, out / f"{tag}_offline_{run}_ref_rank{rank}.pt")
    if lora and not trdpo:
        with torch.no_grad():
            lp = concatenated_forward(res.model, probe_batch(tok))
        info.update(saved=str(save), probe=[lp["chosen_logps"].tolist(), lp["rejected_logps"].tolist()])
    write(out, f"{tag}_offline_{run}", rank, res.model, **info)


def resume(out: Path, tag: str, rank: int):
    "Uninterrupted with a checkpoint after step 1, then a fresh run resumed from it: both end where?"
    from dpo_notes import train
    from dpo_notes.runtime import lora_config
    from dpo_notes.toy import load_toy
    a = out / f"{tag}_resume_a"
    model, tok = load_toy("s")
    res = train.train_dpo(model, tok, pairs(), dpo_cfg(BS, output_dir=str(a), save_steps=1), peft_config=lora_config(**LORA))
    write(out, f"{tag}_resume_whole", rank, res.model, loss=[h["loss"] for h in res.history if "loss" in h],
          files=sorted(p.name for p in (a / "checkpoint-1").iterdir()))
    model, tok = load_toy("s")
    res = train.train_dpo(model, tok, pairs(), dpo_cfg(BS, output_dir=str(out / f"{tag}_resume_b")), peft_config=lora_config(**LORA),
                          resume_from_checkpoint=str(a / "checkpoint-1"))
    write(out, f"{tag}_resume_resumed", rank, res.model, loss=[h["loss"] for h in res.history if "loss" in h])


def online(out: Path, tag: str, rank: int, xpo: bool):
    from dpo_notes import online as on, xpo as xp
    from dpo_notes.runtime import lora_config
    from dpo_notes.toy import load_toy, reward
    model, tok = load_toy("s")
    kw = dict(per_device_train_batch_size=ONLINE_BS, max_steps=ONLINE_STEPS, max_new_tokens=NEW, learning_rate=LR,
              bf16=False, use_cpu=False, disable_tqdm=True, seed=0)
    extra = {}
    if xpo: res = xp.train_xpo(model, tok, prompts(), reward, xp.XPOConfig(**kw), peft_config=lora_config(**LORA))
    else:   # the toy reward plus a reward model (TRL's reward_funcs), which ZeRO-3/FSDP2 shard as TRL does
        rm = reward_model(tok)
        res = on.train_online(model, tok, prompts(), cfg=on.OnlineDPOConfig(**kw), reward_funcs=[reward, rm],
                              reward_weights=[1.0, 1.0], reward_processing_classes=[None, tok])
        extra = dict(rm_numel=numel(rm), ref_numel=numel(res.ref_model))
    rows = [h for h in res.history if "loss" in h]
    write(out, f"{tag}_{'xpo_lora' if xpo else 'online_full'}", rank, res.model, loss=[h["loss"] for h in rows],
          length=[h.get("completions/mean_length", h.get("val/contain_eos_token")) for h in rows], **extra)
    return res.model


def early_stop(out: Path, tag: str, rank: int, model, tok):
    "Rank 0's every token is an eos (it stops at once), rank 1's never is: both must come back, on both backends."
    from dpo_notes.online import sample_completions, tokenize_prompts
    ids, mask = tokenize_prompts(tok, prompts()[:2])
    eos = list(range(len(tok))) if rank == 0 else [len(tok) + 7]
    got = {}
    for backend in ("lean", "hf"):
        t = time.perf_counter()
        c, cm, _ = sample_completions(model, ids, mask, max_new_tokens=NEW, eos_ids=eos, pad_token_id=tok.pad_token_id,
                                      backend=backend, num_samples=1)
        got[backend] = {"width": int(cm.sum(1).max()), "seconds": time.perf_counter() - t}
    (out / f"{tag}_early_stop_rank{rank}.json").write_text(json.dumps(got))


def memory(out: Path, tag: str, rank: int):
    "One AdamW step of the fully fine-tuned toy under this launch; what this rank then stores (`runtime.resident_bytes`)."
    from dpo_notes.runtime import configure_deepspeed, make_accelerator, make_optimizer, resident_bytes
    from dpo_notes.toy import load_toy
    model, tok = load_toy("s"); cfg = dpo_cfg(BS)
    acc = make_accelerator(cfg); configure_deepspeed(acc, cfg)
    opt = make_optimizer(model, cfg)
    model, opt = acc.prepare(model.train(), opt)
    ids = tok(prompts()[:BS], return_tensors="pt", padding=True).input_ids
    acc.backward(model(input_ids=ids, labels=ids).loss); opt.step()
    (out / f"{tag}_rank{rank}.json").write_text(json.dumps(resident_bytes(model, opt)))


def main():
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    if strategy == "single":
        for lora in (True, False):
            for trdpo in (False, True): offline(out, "single", BS * WORLD, 0, lora, trdpo)
        return
    if strategy == "memory": return memory(out, "memory", 0)
    from accelerate import PartialState
    kind = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
    # before dpo_notes makes its Accelerator: gloo with a short collective timeout, so a hang fails in a minute
    PartialState(cpu=not kind, backend="gloo", timeout=datetime.timedelta(seconds=60))
    rank = PartialState().process_index
    if PartialState().num_processes != WORLD: sys.exit(f"expected {WORLD} processes, got {PartialState().num_processes}")
    if strategy.endswith("_memory"): return memory(out, strategy, rank)
    times = {}
    t = time.perf_counter(); offline(out, strategy, BS, rank, lora=True); times["offline_lora"] = time.perf_counter() - t
    if strategy == "multinode": return
    t = time.perf_counter(); offline(out, strategy, BS, rank, lora=False); times["offline_full"] = time.perf_counter() - t
    t = time.perf_counter()
    for lora in (True, False): offline(out, strategy, BS, rank, lora=lora, trdpo=True)
    offline(out, strategy, BS, rank, lora=False, separate_ref=True)
    times["trdpo"] = time.perf_counter() - t
    t = time.perf_counter(); resume(out, strategy, rank); times["resume"] = time.perf_counter() - t
    t = time.perf_counter(); online(out, strategy, rank, xpo=False); times["online_full"] = time.perf_counter() - t
    t = time.perf_counter(); model = online(out, strategy, rank, xpo=True); times["xpo_lora"] = time.perf_counter() - t
    from dpo_notes.toy import load_toy
    early_stop(out, strategy, rank, model, load_toy("s")[1])
    (out / f"{strategy}_times_rank{rank}.json").write_text(json.dumps(times))


if __name__ == "__main__":
    main()
