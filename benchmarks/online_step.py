"""Time one online-DPO step: ours (`dpo_notes.online`) vs TRL 1.16's `trl.experimental.online_dpo.OnlineDPOTrainer`.

    python benchmarks/online_step.py                       # toy "m", both settings, CPU
    python benchmarks/online_step.py --model s --steps 12 --device cuda
    python benchmarks/online_step.py --model smollm2 --batch_size 4 --steps 4 --modes like-for-like   # a 49k vocabulary

Same toy model, prompts, sampling settings, generation length and reward function (the toy reward) for both.
Two settings:
  defaults      each trainer at its own defaults: TRL = bf16 autocast + gradient checkpointing (so `use_cache=False`
                while generating); ours = fp32 on CPU, no checkpointing, KV cache on;
  like-for-like fp32, no gradient checkpointing for both, and every completion exactly `--max_new_tokens` long
                (`min_new_tokens` = `max_new_tokens` in both), so both do the same arithmetic.
Timing: one process, A/B alternated step by step: TRL's `train()` runs and a callback runs one of our steps after
each of its steps, each with its own model copy and optimiser; the first `--warmup` steps of each are dropped;
we report medians. Split per step: generate / score (decode + reward) / log-probs (policy + reference forward) /
backward (+ optimiser step and TRL's bookkeeping in "other").
Peak memory: on CUDA `torch.cuda.max_memory_allocated` around each step. On CPU the allocator has no such counter,
so each trainer runs alone in a fresh subprocess with glibc told to `mmap` every allocation over 64 KB
(`MALLOC_MMAP_THRESHOLD_=65536`: a freed tensor leaves the resident set at once, so RSS follows live memory); after
the warm-up steps we reset the kernel's peak-RSS counter (`/proc/self/clear_refs`), note the RSS, run the measured
steps and report peak RSS minus that baseline: the transient memory a step needs on top of weights, optimiser
state and caches.
"""
from __future__ import annotations
import argparse, copy, json, os, resource, statistics, subprocess, sys, tempfile, time, warnings
from contextlib import contextmanager, nullcontext
import torch

def _rss_mb() -> float:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def _peak_rss_mb() -> float:
    "VmHWM: the peak resident set since the last `_reset_peak_rss()`."
    import re
    with open("/proc/self/status") as f: return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024

def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f: f.write("5")     # Linux >= 4.0: reset VmHWM to the current RSS

def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize()

def settings(mode: str, args):
    "(TRL config kwargs, our config kwargs) for a mode."
    common = dict(beta=0.1, temperature=0.9, max_new_tokens=args.max_new_tokens, learning_rate=1e-4,
                  per_device_train_batch_size=args.batch_size, max_steps=args.steps + args.warmup, seed=0)
    if mode == "defaults":
        return dict(common), dict(common)          # TRL: bf16=True, gradient_checkpointing=True are its defaults
    fixed = dict(generation_kwargs={"min_new_tokens": args.max_new_tokens})
    return dict(common, bf16=False, gradient_checkpointing=False, **fixed), dict(common, bf16=False, gradient_checkpointing=False, **fixed)

class Timer:
    "Accumulates wall time per label for the current step."
    def __init__(self, device): self.device, self.t = device, {}
    @contextmanager
    def __call__(self, label):
        _sync(self.device); t0 = time.perf_counter()
        try: yield
        finally: _sync(self.device); self.t[label] = self.t.get(label, 0.0) + time.perf_counter() - t0

def build_trl(model, tok, prompts, reward_fn, kw, device, out_dir):
    from datasets import Dataset
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    cfg = OnlineDPOConfig(output_dir=out_dir, report_to=[], logging_strategy="no", disable_tqdm=True, save_strategy="no",
                          use_cpu=device.type == "cpu", dataloader_drop_last=True, **kw)
    def toy_reward(prompts, completions, completion_ids=None, **_):
        # the same reward as ours sees: completion text + whether it finished (eos among its tokens)
        eos = tok.eos_token_id
        text = lambda c: c[-1]["content"] if isinstance(c, list) else c          # conversational completions are messages
        return [reward_fn(p, text(c), finished=eos in ids) for p, c, ids in zip(prompts, completions, completion_ids)]
    toy_reward.__name__ = "toy_reward"
    tr = OnlineDPOTrainer(model=model, reward_funcs=toy_reward, args=cfg, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": prompts}))
    return tr

def instrument_trl(tr, timer):
    "Wrap TRL's generate / reward / forward / backward with the timer."
    g, r, f, b = tr._generate, tr._calculate_rewards_from_functions, tr._forward, tr.accelerator.backward
    def gen(*a, **k):
        with timer("generate"): return g(*a, **k)
    def rew(*a, **k):
        with timer("score"): return r(*a, **k)
    def fwd(*a, **k):
        with timer("logps"): return f(*a, **k)
    def bwd(*a, **k):
        with timer("backward"): return b(*a, **k)
    tr._generate, tr._calculate_rewards_from_functions, tr._forward, tr.accelerator.backward = gen, rew, fwd, bwd

class Ours:
    "One optimiser step of `dpo_notes.online.train_online`'s loop at a time (same helpers, minus logging and eval)."
    def __init__(self, model, tok, prompts, reward_fn, kw, device):
        from dpo_notes.online import OnlineDPOConfig, prompt_batch
        from dpo_notes.runtime import setup_policy, make_reference, make_optimizer, make_scheduler, autocast
        self.cfg, self.device, self.autocast = OnlineDPOConfig(**kw), device, autocast
        self.model = setup_policy(model.to(device), None, self.cfg).train()
        self.ref = make_reference(self.model)
        self.opt = make_optimizer(self.model, self.cfg); self.sched = make_scheduler(self.opt, self.cfg, self.cfg.max_steps)
        self.tok, self.prompts, self.reward_fn, self.i, self.batch = tok, prompts, reward_fn, 0, prompt_batch
    def step(self, timer):
        from dpo_notes.online import online_dpo_step
        idx, epoch = self.batch(len(self.prompts), self.cfg.per_device_train_batch_size, self.i, self.cfg.seed)
        coin = torch.Generator().manual_seed(self.i); self.i += 1
        with self.autocast(self.cfg, self.device):
            loss, met, _ = online_dpo_step(self.model, self.ref, self.tok, [self.prompts[j] for j in idx], self.reward_fn,
                                           self.cfg, epoch, coin)
        with timer("backward"):
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step(); self.sched.step(); self.opt.zero_grad(set_to_none=True)
        for k in ("generate", "score", "logps"): timer.t[k] = timer.t.get(k, 0.0) + met[f"time/{k}"]

SMOL_PROMPTS = ["Write one sentence about the sea.", "Name three fruits.", "What is the capital of France?",
                "Give me a tip for sleeping well.", "Describe a cat in one sentence.", "Why is the sky blue?",
                "Suggest a name for a dog.", "What should I cook tonight?"]

def brevity(prompt, completion, finished=True):
    "A rule reward for the SmolLM2 runs: finish, and stay near 20 words."
    return (1.0 if finished else -1.0) - abs(len(completion.split()) - 20) / 20

def load(args, device):
    "(model, tokenizer, prompts, reward) for `--model`: a toy size (toy prompts, toy reward) or smollm2 (a length rule)."
    if args.model == "smollm2":
        from dpo_notes.runtime import load_policy
        model, tok = load_policy("smollm2")
        # the GGUF weights are de-quantised to fp32 on load, but transformers still flags the model as quantized and
        # TRL's Trainer then refuses full fine-tuning: clear the flag (ours never looks at it)
        model.is_quantized, model.hf_quantizer = False, None
        prompts = [[{"role": "user", "content": p}] for p in SMOL_PROMPTS] * 8
        return model.to(device), tok, prompts, brevity
    from dpo_notes.toy import load_toy, load_toy_dataset, reward
    model, tok = load_toy(args.model)
    prompts = [r["prompt"] for r in load_toy_dataset("prompts", "train")]
    return model.to(device), tok, prompts, reward

def run_ab(mode, args, device):
    "Alternate TRL and our steps in one process; returns per-step rows for each."
    from transformers import TrainerCallback
    model, tok, prompts, reward_fn = load(args, device)
    trl_kw, our_kw = settings(mode, args)
    torch.manual_seed(0)
    ours = Ours(copy.deepcopy(model), tok, prompts, reward_fn, our_kw, device)
    tr = build_trl(copy.deepcopy(model), tok, prompts, reward_fn, trl_kw, device, tempfile.mkdtemp())
    rows = {"trl": [], "ours": []}
    trl_timer = Timer(device); instrument_trl(tr, trl_timer)
    class AB(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            trl_timer.t = {}
            if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
            _sync(device); self.t0 = time.perf_counter()
        def on_step_end(self, a, state, control, **kw):
            _sync(device); t = time.perf_counter() - self.t0
            mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
            rows["trl"].append(dict(trl_timer.t, step=t, peak_mb=mem))
            # B: one of our steps
            tm = Timer(device)
            if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
            _sync(device); t0 = time.perf_counter()
            ours.step(tm)
            _sync(device); t = time.perf_counter() - t0
            mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
            rows["ours"].append(dict(tm.t, step=t, peak_mb=mem))
    tr.add_callback(AB())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); tr.train()
    return rows

def run_alone(which, mode, args, device):
    "One trainer alone (for CPU peak memory): peak RSS growth over the measured steps, after the warm-up ones."
    from transformers import TrainerCallback
    model, tok, prompts, reward_fn = load(args, device)
    trl_kw, our_kw = settings(mode, args)
    out = {}
    if which == "trl":
        tr = build_trl(model, tok, prompts, reward_fn, trl_kw, device, tempfile.mkdtemp())
        class Mem(TrainerCallback):
            def on_step_end(self, a, state, control, **kw):
                if state.global_step == args.warmup: _reset_peak_rss(); out["base"] = _rss_mb()
        tr.add_callback(Mem())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore"); tr.train()
    else:
        ours = Ours(model, tok, prompts, reward_fn, our_kw, device)
        for i in range(args.steps + args.warmup):
            if i == args.warmup: _reset_peak_rss(); out["base"] = _rss_mb()
            ours.step(Timer(device))
    return {"peak_rss_growth_mb": _peak_rss_mb() - out["base"]}

def summarise(rows, warmup):
    keys = ["step", "generate", "score", "logps", "backward", "peak_mb"]
    out = {}
    for who, rs in rows.items():
        rs = rs[warmup:]
        out[who] = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in keys}
        out[who]["other"] = out[who]["step"] - sum(out[who][k] for k in ("generate", "score", "logps", "backward"))
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="m"); p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10); p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=16); p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--modes", default="defaults,like-for-like"); p.add_argument("--no_memory", action="store_true")
    p.add_argument("--_alone", default=None, help=argparse.SUPPRESS); p.add_argument("--_mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    from dpo_notes.core import set_threads
    set_threads(); device = torch.device(args.device)
    if args._alone:
        print("RESULT " + json.dumps(run_alone(args._alone, args._mode, args, device))); return
    results = {}
    for mode in args.modes.split(","):
        s = summarise(run_ab(mode, args, device), args.warmup)
        if device.type == "cpu" and not args.no_memory:
            for who in ("trl", "ours"):
                cmd = [sys.executable, __file__, "--_alone", who, "--_mode", mode, "--model", args.model, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--batch_size", str(args.batch_size), "--max_new_tokens", str(args.max_new_tokens)]
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
                outp = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                s[who]["peak_mb"] = json.loads(outp.split("RESULT ")[-1])["peak_rss_growth_mb"]
        results[mode] = s
        mem_label = "peak MB (CUDA allocated)" if device.type == "cuda" else "peak RSS growth MB"
        print(f"\n== {mode}: toy '{args.model}', {args.batch_size} prompts x 2 completions, max_new_tokens={args.max_new_tokens}, "
              f"{args.steps} steps (+{args.warmup} warm-up), {device}, medians")
        print(f"{'':6s} {'step s':>8s} {'generate':>9s} {'score':>7s} {'logps':>7s} {'backward':>9s} {'other':>7s} {mem_label:>26s}")
        for who in ("trl", "ours"):
            r = s[who]
            print(f"{who:6s} {r['step']:8.3f} {r['generate']:9.3f} {r['score']:7.3f} {r['logps']:7.3f} {r['backward']:9.3f} {r['other']:7.3f} {r['peak_mb']:26.1f}")
        print(f"ratio ours/TRL: time {s['ours']['step'] / s['trl']['step']:.2f}x, memory {s['ours']['peak_mb'] / max(s['trl']['peak_mb'], 1e-9):.2f}x")
    if args.json:
        with open(args.json, "w") as f: json.dump(results, f, indent=1)
    return results

if __name__ == "__main__":
    main()
