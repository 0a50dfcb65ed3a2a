"""GPU benchmark: offline DPO tokens/s and MFU, online DPO prompts/s, peak memory; ours (`dpo_notes`) vs TRL 1.16.

    python benchmarks/gpu_bench.py                                   # Qwen2.5-0.5B-shaped, random weights, CUDA, bf16
    python benchmarks/gpu_bench.py --model Qwen/Qwen2.5-0.5B         # real weights (a local folder or a reachable hub)
    python benchmarks/gpu_bench.py --batch 16 --prompt-len 512 --completion-len 512 --json gpu.json
    python benchmarks/gpu_bench.py --device cpu --tiny --steps 2     # the CPU smoke test (tests/test_gpu_bench_smoke.py)

The model: a `Qwen2ForCausalLM` with Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocabulary 151936, tied embeddings, qkv biases; 494M parameters) and random weights, so no hub is
needed; `--model` loads a folder or hub name instead (a folder holding only a config.json gets random weights).
`--tiny` swaps in a 2-layer, 64-wide Qwen2 with a 1024-word vocabulary, for CPU smoke tests.

The data: synthetic. A word-level tokenizer over the words w0..w{V-1} (one word = one token; `<pad>` 0, `<eos>` 1)
and random words, so every prompt is exactly `--prompt-len` tokens and every completion `--completion-len` tokens
(+ the EOS both trainers append): no padding, the same tokens for both trainers (checked before timing).

What runs, the same for both implementations: the same random model (a fresh copy per run), the same pairs in the same
order (no shuffling), the same batch, lengths, learning rate and β, AdamW, fp32 master weights with bf16 autocast
(`--precision bf16`, the default on CUDA; fp32 on CPU), no gradient checkpointing unless `--gradient-checkpointing`
(then both), the reference model held in memory (no precomputed log-probs), metrics logged every 10 steps.
  offline  `dpo_notes.train.train_dpo`                 vs `trl.DPOTrainer`
  online   `dpo_notes.online.train_online`             vs `trl.experimental.online_dpo.OnlineDPOTrainer`
           two samples per prompt at temperature 0.9, exactly `--completion-len` new tokens each (`min_new_tokens` =
           `max_new_tokens` in both), judged by the same cheap rule reward on the decoded text.

Timing: the wall time between the ends of consecutive optimizer steps (CUDA synchronised), so data loading, sampling,
both forwards, backward, clipping, the optimizer and logging all count; the first `--warmup` steps of every run are
dropped. Each (benchmark, implementation) pair runs `--rounds` times, alternating which goes first (A/B, B/A, ...);
reported: the median over all measured steps. Peak memory: `torch.cuda.max_memory_allocated()` over a whole run
(weights, reference, gradients, optimizer state, activations, logits, the KV cache), the counter reset at its start
with nothing else on the GPU; not measured on CPU. A run that runs out of GPU memory is reported and skipped.

MFU (offline only) = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s (table below, or `--peak-tflops`).
Model FLOPs per step = (6 + 2)·N·tokens: 6·N per token for the policy's forward + backward, 2·N for the reference
forward, N = the model's parameters with the tied embedding counted once (it stands for the LM-head matmul; attention's
T² term is left out, as in the usual MFU). The count is the same for both implementations even where one does less
arithmetic (ours runs the LM head on completion tokens only), so the MFU ratio equals the throughput ratio.
"""
from __future__ import annotations
import argparse, contextlib, copy, gc, io, json, math, os, platform, random, statistics, tempfile, time, warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

# peak dense (no sparsity) bf16 tensor-core TFLOP/s, from NVIDIA's data sheets; the first model name found in the
# device name (as a whole word: "L4" is not "L40S") wins
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),     # H200 SXM
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),  # H100 SXM5 (`NVIDIA H100 80GB HBM3`)
    ("A100", 312.0),                                             # SXM4 and PCIe, 40 and 80 GB
    ("L4", 121.0),
    ("T4", 65.0),               # its fp16 peak: Turing has no bf16 tensor cores, bf16 runs emulated and MFU reads low
]
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})
TINY = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True)
PAD, EOS = 0, 1
COLUMNS = ["bench", "impl", "median_step_s", "tokens_per_s", "prompts_per_s", "MFU", "peak_mem_GB", "steps"]


def peak_tflops(name: str) -> float | None:
    "The peak dense bf16 TFLOP/s of a GPU called `name` (as `torch.cuda.get_device_name` spells it); None if unknown."
    import re
    for key, v in PEAK_BF16_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name, re.I): return v
    return None


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def free(device):
    gc.collect()
    if device.type == "cuda": torch.cuda.synchronize(device); torch.cuda.empty_cache()


def reset_peak(device):
    free(device)
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_accelerate_state():
    """Forget the process-wide accelerate state a previous trainer left (TRL's bf16 mixed precision would otherwise leak
    into our `Accelerator()`, which does not name a precision; TRL's `TrainingArguments` resets it for itself)."""
    try:
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(reset_partial_state=True)
    except Exception: pass


# ----------------------------------------------------------------------------------------------------- model, data
def word_tokenizer(vocab_size: int):
    "A word-level tokenizer over `<pad>`, `<eos>`, `<unk>`, w3..w{V-1}: one whitespace-separated word = one token."
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>")); t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.add_special_tokens(["<pad>", "<eos>", "<unk>"])
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   model_max_length=1 << 20, padding_side="right", clean_up_tokenization_spaces=False)


def build_model(args):
    "(model in fp32 on CPU, a description). Random weights unless `--model` names weights that can be loaded."
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    if args.model is None:
        cfg = Qwen2Config(**(TINY if args.tiny else QWEN25_05B), pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
        model, desc = Qwen2ForCausalLM(cfg), ("tiny Qwen2" if args.tiny else "Qwen2.5-0.5B-shaped Qwen2") + ", random weights"
    elif os.path.isdir(args.model) and not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(args.model)):
        cfg = AutoConfig.from_pretrained(args.model)
        model, desc = AutoModelForCausalLM.from_config(cfg), f"{args.model} (config only), random weights"
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        desc = f"{args.model}, pretrained weights"
    model = model.float()
    model.config.pad_token_id, model.config.eos_token_id, model.config.bos_token_id = PAD, EOS, None
    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, do_sample=True)
    model.config.use_cache = True
    return model.eval(), desc


def n_params(model) -> int:
    "Distinct parameters: a tied embedding/LM head counts once."
    return sum(p.numel() for p in model.parameters())


def words(rng: random.Random, n: int, V: int) -> str:
    return " ".join(f"w{rng.randrange(3, V)}" for _ in range(n))


def make_pairs(n: int, args, V: int) -> list[dict]:
    "n synthetic preference pairs; completions start with a space (TRL concatenates prompt + completion as is)."
    rng = random.Random(0)
    return [{"prompt": words(rng, args.prompt_len, V), "chosen": " " + words(rng, args.completion_len, V),
             "rejected": " " + words(rng, args.completion_len, V)} for _ in range(n)]


def make_prompts(n: int, args, V: int) -> list[str]:
    rng = random.Random(1)
    return [words(rng, args.prompt_len, V) for _ in range(n)]


def rule_reward(prompt: str, completion: str) -> float:
    "A cheap deterministic score of a completion's text: the share of its words whose id is divisible by 3."
    ws = completion.split()
    return sum(int(w[1:]) % 3 == 0 for w in ws if w[1:].isdigit()) / max(len(ws), 1)


def trl_reward(prompts, completions, **_):
    return [rule_reward(p, c) for p, c in zip(prompts, completions)]


# ------------------------------------------------------------------------------------------------- the four runners
class Stamps:
    "Wall-clock stamps at step boundaries (device synchronised first)."
    def __init__(self, device): self.device, self.t = device, []
    def __call__(self, *_, **__):
        sync(self.device); self.t.append(time.perf_counter())
    def step_times(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.t, self.t[1:])][warmup:]


def offline_ours(model, tok, pairs, args, device, total_steps):
    from dpo_notes.train import DPOConfig, train_dpo
    reset_accelerate_state()
    cfg = DPOConfig(output_dir=None, max_steps=total_steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
                    beta=0.1, bf16=args.precision == "bf16", gradient_checkpointing=args.gradient_checkpointing,
                    logging_steps=10, shuffle=False, disable_tqdm=True, use_cpu=device.type == "cpu",
                    max_length=args.max_length, seed=0)
    st = Stamps(device)
    res = train_dpo(model, tok, pairs, cfg, ref_model=copy.deepcopy(model), on_step_end=st)
    del res
    return st


def offline_trl(model, tok, pairs, args, device, total_steps):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    st = Stamps(device)

    class StepEnd(TrainerCallback):
        def on_step_end(self, a, state, control, **kw): st()

    with tempfile.TemporaryDirectory() as d:
        cfg = DPOConfig(output_dir=d, report_to=[], max_steps=total_steps, per_device_train_batch_size=args.batch,
                        learning_rate=args.lr, beta=0.1, bf16=args.precision == "bf16", fp16=False,
                        gradient_checkpointing=args.gradient_checkpointing, logging_steps=10,
                        train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True,
                        use_cpu=device.type == "cpu", max_length=args.max_length, seed=0, dataloader_num_workers=0)
        tr = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=cfg, train_dataset=Dataset.from_list(pairs),
                        processing_class=tok, callbacks=[StepEnd()])
        with contextlib.redirect_stdout(io.StringIO()): tr.train()      # Trainer prints its logs when tqdm is off
        tr.accelerator.free_memory(); del tr
    return st


def online_kwargs(args, total_steps):
    "The settings both online trainers get (names shared by TRL's and our OnlineDPOConfig)."
    return dict(beta=0.1, temperature=0.9, max_new_tokens=args.completion_len, max_length=args.prompt_len + args.completion_len,
                generation_kwargs={"min_new_tokens": args.completion_len}, per_device_train_batch_size=args.batch,
                learning_rate=args.lr, max_steps=total_steps, bf16=args.precision == "bf16",
                gradient_checkpointing=args.gradient_checkpointing, logging_steps=10, seed=0)


def online_ours(model, tok, prompts, args, device, total_steps):
    from dpo_notes.online import OnlineDPOConfig, OnlineMethod, collect_pairs, pairs_loss, train_online
    reset_accelerate_state()
    cfg = OnlineDPOConfig(**online_kwargs(args, total_steps), use_cpu=device.type == "cpu", disable_tqdm=True)
    st = Stamps(device)

    def timed_collect(*a, **k):        # a stamp as each step starts (one micro-batch a step) ...
        st(); return collect_pairs(*a, **k)

    def end_stamp(model):              # ... and one after the last (train_online calls eval_fn at step 0 and at the end)
        if st.t: st()
        return {}

    res = train_online(model, tok, prompts, rule_reward, cfg, ref_model=copy.deepcopy(model), step_fn=OnlineMethod("online_dpo", timed_collect, pairs_loss),
                       eval_fn=end_stamp)
    del res
    return st


def online_trl(model, tok, prompts, args, device, total_steps):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    st = Stamps(device)

    class StepBegin(TrainerCallback):  # the same boundaries as ours: each step's start, and the last step's end
        def on_step_begin(self, a, state, control, **kw): st()
        def on_train_end(self, a, state, control, **kw): st()

    with tempfile.TemporaryDirectory() as d:
        cfg = OnlineDPOConfig(output_dir=d, report_to=[], save_strategy="no", use_cpu=device.type == "cpu", fp16=False,
                              dataloader_drop_last=True, disable_tqdm=True, **online_kwargs(args, total_steps))
        tr = OnlineDPOTrainer(model=model, ref_model=copy.deepcopy(model), reward_funcs=trl_reward, args=cfg,
                              processing_class=tok, train_dataset=Dataset.from_dict({"prompt": prompts}),
                              callbacks=[StepBegin()])
        with contextlib.redirect_stdout(io.StringIO()): tr.train()
        tr.accelerator.free_memory(); del tr
    return st


RUNNERS = {("offline", "ours"): offline_ours, ("offline", "trl"): offline_trl,
           ("online", "ours"): online_ours, ("online", "trl"): online_trl}


# ----------------------------------------------------------------------------------------------------- checks, main
def check_same_tokens(tok, pairs, args):
    "Both trainers must see the same token ids: ours via `dpo_notes.train.prepare_examples`, TRL via its tokenisation."
    from dpo_notes.train import DPOConfig, prepare_examples
    ours = prepare_examples(pairs[:2], tok, DPOConfig(output_dir=None, max_length=args.max_length))
    for p, o in zip(pairs[:2], ours):
        prompt = tok(p["prompt"])["input_ids"]
        chosen = tok(p["prompt"] + p["chosen"] + tok.eos_token)["input_ids"][len(prompt):]   # TRL's recipe
        if o["prompt_ids"] != prompt or o["chosen_ids"] != chosen or len(prompt) != args.prompt_len \
                or len(chosen) != args.completion_len + 1:
            raise RuntimeError(f"tokenisation differs: ours {len(o['prompt_ids'])}+{len(o['chosen_ids'])} tokens, "
                               f"TRL's {len(prompt)}+{len(chosen)}")


def run_one(bench, impl, base, tok, data, args, device):
    "One run on a fresh copy of the model: (measured step times, peak GB)."
    total = args.warmup + args.steps + 1
    model = copy.deepcopy(base)
    reset_peak(device)
    if device.type == "cuda" and torch.cuda.memory_allocated(device) > 2**26:   # a previous run left tensors behind
        print(f"  note: {torch.cuda.memory_allocated(device) / 2**30:.2f} GB still allocated before {bench}/{impl}: "
              "its peak includes them", flush=True)
    st = RUNNERS[bench, impl](model, tok, data, args, device, total)
    sync(device)
    peak = peak_gb(device)
    del model; free(device)
    times = st.step_times(args.warmup)
    if len(times) < args.steps:
        raise RuntimeError(f"{bench}/{impl}: expected {args.steps} measured steps, got {len(times)} (stamps: {len(st.t)})")
    return times[:args.steps], peak


def summarise(bench, impl, times, peaks, args, N, peak_flops):
    med = statistics.median(times)
    row = {"bench": bench, "impl": impl, "median_step_s": med, "tokens_per_s": float("nan"),
           "prompts_per_s": float("nan"), "MFU": float("nan"), "peak_mem_GB": max(peaks), "steps": len(times)}
    if bench == "offline":
        tokens = 2 * args.batch * (args.prompt_len + args.completion_len + 1)      # chosen + rejected rows, EOS included
        row["tokens_per_s"] = tokens / med
        if peak_flops: row["MFU"] = (6 + 2) * N * tokens / med / peak_flops
    else:
        row["prompts_per_s"] = args.batch / med
        row["tokens_per_s"] = 2 * args.batch * args.completion_len / med            # generated tokens
    return row


def fmt(v, col):
    if isinstance(v, str): return v
    if isinstance(v, float) and math.isnan(v): return "n/a"
    if col == "MFU": return f"{100 * v:.1f}%"
    if col == "steps": return str(v)
    return f"{v:.4g}"


def table(rows) -> str:
    cells = [COLUMNS] + [[fmt(r[c], c) for c in COLUMNS] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w[i]) if i > 1 else c.ljust(w[i]) for i, c in enumerate(r)) for r in cells)


def ratios(rows) -> dict:
    "ours / TRL for each benchmark: time per step, throughput, peak memory."
    out = {}
    for bench in dict.fromkeys(r["bench"] for r in rows):
        o = next((r for r in rows if r["bench"] == bench and r["impl"] == "ours"), None)
        t = next((r for r in rows if r["bench"] == bench and r["impl"] == "trl"), None)
        if o is None or t is None: continue
        thr = "tokens_per_s" if bench == "offline" else "prompts_per_s"
        out[bench] = {"time": o["median_step_s"] / t["median_step_s"], "throughput": o[thr] / t[thr],
                      "memory": o["peak_mem_GB"] / t["peak_mem_GB"] if t["peak_mem_GB"] == t["peak_mem_GB"] else float("nan")}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--model", default=None, help="a local folder or hub name; default: Qwen2.5-0.5B's shape, random weights")
    p.add_argument("--tiny", action="store_true", help="a tiny Qwen2 (2 layers, width 64, 1024 words): for CPU smoke tests")
    p.add_argument("--benches", default="offline,online", help="comma-separated: offline, online")
    p.add_argument("--impls", default="ours,trl", help="comma-separated: ours, trl")
    p.add_argument("--batch", type=int, default=None, help="pairs (offline) / prompts (online) per step; default 8 (tiny: 2)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens; default 256 (tiny: 8)")
    p.add_argument("--completion-len", type=int, default=None, help="completion tokens (online: new tokens); default 256 (tiny: 8)")
    p.add_argument("--steps", type=int, default=10, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=None, help="steps dropped at the start of each run; default 3 (tiny: 1)")
    p.add_argument("--rounds", type=int, default=None, help="runs per implementation, alternating order; default 2 (tiny: 1)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--gradient-checkpointing", action="store_true", help="turn it on in both trainers")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s (overrides the table)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: $DPO_NOTES_THREADS or 1)")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    a.device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for k, big, tiny in (("batch", 8, 2), ("prompt_len", 256, 8), ("completion_len", 256, 8), ("warmup", 3, 1), ("rounds", 2, 1)):
        if getattr(a, k) is None: setattr(a, k, tiny if a.tiny else big)
    a.precision = a.precision or ("bf16" if a.device.type == "cuda" else "fp32")
    a.max_length = a.prompt_len + a.completion_len + 8
    for k in ("batch", "prompt_len", "completion_len", "steps", "rounds"):
        if getattr(a, k) < 1: p.error(f"--{k.replace('_', '-')} must be >= 1")
    if a.warmup < 1: p.error("--warmup must be >= 1 (the first step carries one-off set-up costs)")
    a.benches, a.impls = a.benches.split(","), a.impls.split(",")
    if not set(a.benches) <= {"offline", "online"}: p.error("--benches: expected offline and/or online")
    if not set(a.impls) <= {"ours", "trl"}: p.error("--impls: expected ours and/or trl")
    if a.device.type == "cuda" and a.precision == "bf16" and not torch.cuda.is_bf16_supported():
        p.error("this GPU has no bf16: pass --precision fp32")
    return a


def main(argv=None):
    args = parse_args(argv)
    from dpo_notes.core import set_threads
    import datasets, transformers, trl
    datasets.disable_progress_bars(); transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    set_threads(args.threads)
    device = args.device
    base, desc = build_model(args)
    V, N = base.config.vocab_size, n_params(base)
    tok = word_tokenizer(V)
    total = args.warmup + args.steps + 1
    pairs = make_pairs(args.batch * total, args, V)
    prompts = make_prompts(args.batch * total, args, V)
    check_same_tokens(tok, pairs, args)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    tf = args.peak_tflops or (peak_tflops(gpu) if device.type == "cuda" else None)
    print(f"device: {gpu} ({device}), peak bf16 {'%g TFLOP/s' % tf if tf else 'unknown (MFU n/a; pass --peak-tflops)'}")
    print(f"model: {desc}, N = {N / 1e6:.1f}M parameters; precision {args.precision}"
          f"{' (fp32 weights, bf16 autocast)' if args.precision == 'bf16' else ''}, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"batch {args.batch}, prompt {args.prompt_len} tokens, completion {args.completion_len} (+EOS offline), "
          f"{args.steps} measured steps after {args.warmup} warm-up, {args.rounds} round(s) A/B alternated; "
          f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}", flush=True)

    times, peaks, failed = {}, {}, {}
    for bench in args.benches:
        data = pairs if bench == "offline" else prompts
        for r in range(args.rounds):
            order = args.impls if r % 2 == 0 else args.impls[::-1]
            for impl in order:
                if (bench, impl) in failed: continue
                try: t, pk = run_one(bench, impl, base, tok, data, args, device)
                except torch.OutOfMemoryError:                 # report it and carry on with the other runs
                    failed[bench, impl] = "CUDA out of memory"
                if (bench, impl) in failed:                    # (outside the except: its traceback no longer pins the run)
                    free(device)
                    print(f"  {bench:7s} {impl:4s} round {r + 1}: CUDA out of memory (try a smaller --batch)", flush=True)
                    continue
                times.setdefault((bench, impl), []).extend(t); peaks.setdefault((bench, impl), []).append(pk)
                print(f"  {bench:7s} {impl:4s} round {r + 1}: median {statistics.median(t):.4g} s/step", flush=True)
    rows = [summarise(b, i, times[b, i], peaks[b, i], args, N, tf * 1e12 if tf else None) for b, i in times
            if (b, i) not in failed]
    rows += [{"bench": b, "impl": i, **{c: float("nan") for c in COLUMNS[2:]}, "steps": 0, "error": e} for (b, i), e in failed.items()]
    print()
    print(table(rows))
    for r in rows:
        if "error" in r: print(f"{r['bench']}/{r['impl']}: {r['error']}")
    rat = ratios(rows)
    for bench, q in rat.items():
        print(f"ours/TRL {bench}: time per step {q['time']:.2f}x, throughput {q['throughput']:.2f}x, "
              f"peak memory {fmt(q['memory'], '')}{'' if math.isnan(q['memory']) else 'x'}")
    result = {"device": gpu, "peak_tflops": tf, "model": desc, "params": N, "args": {k: (str(v) if isinstance(v, torch.device) else v)
              for k, v in vars(args).items()}, "rows": rows, "ratios": rat, "step_times": {f"{b}/{i}": t for (b, i), t in times.items()},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}}
    if args.json:
        with open(args.json, "w") as f: json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
