"""How much of one online DPO step is matrix multiplication, ours against TRL 1.16: a floor for the time ratio.

    python benchmarks/online_mm_share.py                      # SmolLM2-135M + LoRA r16, batch 8, 24 new tokens, fp32
    python benchmarks/online_mm_share.py --steps 3 --rounds 2 --json mm.json

The setting of `smollm2_steps.py`'s online bench (like for like: the same prompts, 8 prompts x 2 completions of exactly
`--max_new_tokens` tokens at temperature 1, the VADER reward, fp32, no gradient checkpointing, one torch thread).
Each run does `--warmup` + `--steps` + 1 steps; `--rounds` runs per side, alternated A/B, B/A, in one process. The
`--steps` steps after the warm-up are timed (wall time between optimizer-step ends; the median over all rounds),
the last step of each run runs under `torch.profiler` (CPU), which reports the self time of every operator; the
matrix multiplications are `aten::mm`, `addmm`, `bmm`, `baddbmm` (the median over rounds).

Why: the step time of an implementation that does a given set of multiplications cannot fall below the time those
multiplications take. Ours does only the multiplications online DPO needs (sampling: a prompt prefill and one decode
step per new token through base + adapter; a policy forward with the LM head on completion tokens only, its backward;
a reference forward), so `ours' matmul time / TRL's step time` is a lower bound for the ratio `ours / TRL` that any
implementation doing this arithmetic, in this precision on this machine, could reach.
"""
from __future__ import annotations
import argparse, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import smollm2_steps as S                                              # noqa: E402 (the same runners and settings)

MM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


class ProfiledStamps(S.Stamps):
    "Step-end stamps; the step after the timed ones runs under torch.profiler."
    def __init__(self, warmup: int, steps: int):
        super().__init__(warmup, memory=False); self.steps, self.prof = steps, None
    def __call__(self, *_):
        super().__call__()
        n = len(self.t) - 1                                            # steps finished so far
        if n == self.warmup + self.steps:
            from torch.profiler import ProfilerActivity, profile
            self.prof = profile(activities=[ProfilerActivity.CPU]); self.prof.start(); self.t0 = time.perf_counter()
        elif n == self.warmup + self.steps + 1 and self.prof is not None:
            self.wall = time.perf_counter() - self.t0; self.prof.stop()
    def summary(self) -> dict:
        ev = {e.key: e.self_cpu_time_total / 1e6 for e in self.prof.key_averages()}
        mm = {k: ev.get(k, 0.0) for k in MM_OPS}
        return {"step_s": self.times()[:self.steps], "profiled_cpu_s": sum(ev.values()), "mm_s": sum(mm.values()), "mm_by_op": mm}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8); p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=2, help="timed steps per side, after the warm-up")
    p.add_argument("--warmup", type=int, default=1); p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.precision, args.total = "fp32", args.warmup + args.steps + 1
    from dpo_notes.core import set_threads
    import datasets, transformers
    datasets.disable_progress_bars(); transformers.utils.logging.set_verbosity_error(); transformers.utils.logging.disable_progress_bar()
    set_threads()
    base, tok, prompts = S.load()
    res = {"threads": torch.get_num_threads(), "batch": args.batch, "max_new_tokens": args.max_new_tokens, "torch": torch.__version__}
    runs = {"ours": [], "trl": []}
    for r in range(args.rounds):
        for who in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
            st = ProfiledStamps(args.warmup, args.steps)
            S.RUNNERS[("online", who)](S.copy.deepcopy(base), tok, prompts, args, st)
            runs[who].append(st.summary())
            print(f"  {who} round {r}: steps {[round(x, 2) for x in runs[who][-1]['step_s']]} s, profiled step "
                  f"{runs[who][-1]['profiled_cpu_s']:.2f} s of operators, {runs[who][-1]['mm_s']:.2f} s matmul", flush=True)
    for who, rs in runs.items():
        steps = [x for r in rs for x in r["step_s"]]
        res[who] = r = {"median_step_s": statistics.median(steps), "n_steps": len(steps),
                        "profiled_cpu_s": statistics.median(x["profiled_cpu_s"] for x in rs),
                        "mm_s": statistics.median(x["mm_s"] for x in rs), "runs": rs}
        r["mm_share"] = statistics.median(x["mm_s"] / x["profiled_cpu_s"] for x in rs)
        print(f"{who:4s}: step {r['median_step_s']:.2f} s (median of {r['n_steps']}); profiled steps: {r['profiled_cpu_s']:.2f} s "
              f"of operator time, {r['mm_s']:.2f} s of it matrix multiplication ({r['mm_share']:.0%}; medians over rounds)", flush=True)
    o, t = res["ours"], res["trl"]
    res["time_ratio"] = o["median_step_s"] / t["median_step_s"]
    res["floor_ratio"] = o["mm_s"] / t["median_step_s"]
    print(f"ours/TRL step time {res['time_ratio']:.2f}x; ours' matrix multiplications alone take {res['floor_ratio']:.2f}x "
          f"TRL's step time (a floor for any implementation that does this arithmetic here)")
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
