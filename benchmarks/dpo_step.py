"""Time and memory of a DPO training step: ours (`dpo_notes.train.train_dpo`) against TRL 1.16's `DPOTrainer`.

    python benchmarks/dpo_step.py                      # toy "m" model, CPU
    python benchmarks/dpo_step.py --model s --device cuda --batch-size 16 --json out.json

Like for like: both trainers get the same policy, the same pairs in the same order (no shuffling), the same batch
size and `max_length`, fp32 (no autocast), no gradient checkpointing, fused AdamW, logging every 10 steps, no
evaluation and no checkpoints. Two settings: the reference computed every step (each trainer holds a frozen copy),
and the reference log-probs precomputed once before training (no reference in memory during training). Each trainer
otherwise runs as it ships: ours with its padding-free forward (pairs packed without padding, each prompt computed
once; `padding_free=True`, the default), TRL with its fused, chunked LM head (its `padding_free` is off in 1.16).

Time: the wall time between the ends of consecutive optimizer steps (so data loading, both forwards, backward,
clipping, the optimizer, the metrics and the logging all count), after `--warmup` steps; the median over every
measured step of `--rounds` runs per trainer. Runs alternate A/B then B/A so drift (thermal, other load) hits both.

Peak memory: the peak of live tensor bytes during `--mem-steps` steady-state steps, above the level when they start
(weights, optimizer state and a reference's weights are resident before and so not counted: what is counted is
gradients, activations, logits and temporaries of a step). On CUDA: `torch.cuda.max_memory_allocated()` minus
`memory_allocated()` at the start, in-process. On CPU, where torch keeps no such counter, each trainer runs in a fresh
subprocess under `torch.profiler` with `profile_memory=True`, and the peak is that of the running sum of its
allocation/free events (the CPU allocator's live bytes, the same quantity CUDA's counter tracks).
"""
from __future__ import annotations
import argparse, contextlib, copy, io, itertools, json, os, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load(args):
    from dpo_notes.toy import load_toy, load_toy_dataset
    model, tok = load_toy(args.model)
    pairs = list(load_toy_dataset("prefs", "train"))[: args.batch_size * (args.warmup + max(args.steps, args.mem_steps) + 2)]
    return model.to(args.device), tok, pairs


def trl_records(pairs):
    "TRL joins prompt + completion with no separator; our toy format puts a space between them."
    return [{"prompt": p["prompt"], "chosen": " " + p["chosen"], "rejected": " " + p["rejected"]} for p in pairs]


def run_ours(model, tok, pairs, args, precompute, on_step_end):
    from dpo_notes.train import DPOConfig, train_dpo
    cfg = DPOConfig(output_dir=None, max_steps=args.total, per_device_train_batch_size=args.batch_size,
                    learning_rate=args.lr, bf16=False, gradient_checkpointing=False, logging_steps=10, shuffle=False,
                    disable_tqdm=True, use_cpu=args.device == "cpu", max_length=args.max_length,
                    precompute_ref_logps=precompute, seed=0)
    ref = None if precompute else copy.deepcopy(model)
    train_dpo(model, tok, pairs, cfg, ref_model=ref, on_step_end=lambda step, history: on_step_end(step))


def run_trl(model, tok, pairs, args, precompute, on_step_end):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepEnd(TrainerCallback):
        def on_step_end(self, a, state, control, **kw): on_step_end(state.global_step)

    with tempfile.TemporaryDirectory() as d:
        cfg = DPOConfig(output_dir=d, report_to=[], max_steps=args.total, per_device_train_batch_size=args.batch_size,
                        learning_rate=args.lr, bf16=False, gradient_checkpointing=False, logging_steps=10,
                        train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True,
                        use_cpu=args.device == "cpu", max_length=args.max_length, precompute_ref_log_probs=precompute,
                        seed=0, dataloader_num_workers=0)
        ref = None if precompute else copy.deepcopy(model)
        trainer = DPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=Dataset.from_list(trl_records(pairs)),
                             processing_class=tok, callbacks=[StepEnd()])
        with contextlib.redirect_stdout(io.StringIO()):   # Trainer prints its log dicts when tqdm is off
            trainer.train()


RUNNERS = {"ours": run_ours, "trl": run_trl}


def step_times(who, base, tok, pairs, args, precompute):
    "Per-step wall times of one run, warm-up steps dropped."
    stamps = []
    RUNNERS[who](copy.deepcopy(base), tok, pairs, args, precompute, lambda step: stamps.append(time.perf_counter()))
    if args.device == "cuda": torch.cuda.synchronize()
    return [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:]


class PeakMemory:
    "Peak live tensor bytes between steps `start` and `start + n`, above the level at `start` (see module docstring)."
    def __init__(self, device, start, n): self.device, self.start, self.stop, self.peak, self.prof = device, start, start + n, None, None

    def __call__(self, step):
        if step == self.start:
            if self.device == "cuda":
                torch.cuda.synchronize(); self.base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
            else:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
                self.prof.start()
        elif step == self.stop:
            if self.device == "cuda":
                torch.cuda.synchronize(); self.peak = torch.cuda.max_memory_allocated() - self.base
            else:
                self.prof.stop()
                evs = [e for e in self.prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
                live = itertools.accumulate(e.nbytes() for e in sorted(evs, key=lambda e: e.start_ns()))
                self.peak = max(live, default=0)


def peak_memory(who, base, tok, pairs, args, precompute):
    "Peak step memory in bytes; on CPU measured in a fresh subprocess so neither trainer's allocations touch the other's."
    if args.device == "cpu" and not args._child:
        cmd = [sys.executable, __file__, "--_child", who, "--precompute", str(int(precompute)), *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak"]
    meter = PeakMemory(args.device, args.warmup, args.mem_steps)
    RUNNERS[who](copy.deepcopy(base), tok, pairs, args, precompute, meter)
    return meter.peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="m", help="toy model size: s, m or l")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (after warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mem-steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--modes", default="per-step,precomputed")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--precompute", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.total = args.warmup + max(args.steps, args.mem_steps) + 1
    from dpo_notes.core import set_threads
    import datasets, transformers
    datasets.disable_progress_bars(); transformers.utils.logging.set_verbosity_error()
    set_threads()
    base, tok, pairs = load(args)
    if args._child:                                    # a memory-measuring subprocess
        print(json.dumps({"peak": peak_memory(args._child, base, tok, pairs, args, bool(args.precompute))})); return

    results = {"device": args.device, "model": args.model, "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    for mode in args.modes.split(","):
        pre = mode == "precomputed"
        times = {"ours": [], "trl": []}
        for r in range(args.rounds):
            for who in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
                times[who] += step_times(who, base, tok, pairs, args, pre)
        mem = {who: peak_memory(who, base, tok, pairs, args, pre) for who in ("ours", "trl")}
        res = {who: {"median_step_ms": 1e3 * statistics.median(times[who]), "n_steps": len(times[who]),
                     "peak_step_mem_mb": mem[who] / 2**20} for who in ("ours", "trl")}
        res["time_ratio"] = res["ours"]["median_step_ms"] / res["trl"]["median_step_ms"]
        res["mem_ratio"] = res["ours"]["peak_step_mem_mb"] / res["trl"]["peak_step_mem_mb"]
        results[mode] = res
        print(f"reference {mode:>11}: ours {res['ours']['median_step_ms']:7.1f} ms, {res['ours']['peak_step_mem_mb']:7.2f} MB | "
              f"TRL {res['trl']['median_step_ms']:7.1f} ms, {res['trl']['peak_step_mem_mb']:7.2f} MB | "
              f"ours/TRL: time {res['time_ratio']:.2f}x, memory {res['mem_ratio']:.2f}x  "
              f"(median of {res['ours']['n_steps']} steps each, batch {args.batch_size}, toy '{args.model}', {args.device})")
    if args.json: Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
