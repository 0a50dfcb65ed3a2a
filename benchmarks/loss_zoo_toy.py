"""Every `dpo_loss` loss type on the toy at one budget: offline DPO of toy-s, several seeds, evaluated against the SFT model.

    python benchmarks/loss_zoo_toy.py [--seeds 0 1 2] [--steps 40] [--out data/loss_zoo_toy.csv] [--loss_types robust ...]

With --loss_types, only those rows are (re)computed and replace their old rows in --out.

One row per (loss_type, seed): win rate of one sampled completion per held-out test prompt (256) against one SFT sample
for the same prompt (toy reward decides, ties count ½, a completion cut off at the token limit is scored as unfinished),
with its 95% Wilson interval; KL(π‖π_SFT) estimated on the policy's samples (mean of Σ log π/π_SFT over completion
tokens); distinct rate (fraction of distinct completions); mean toy reward; wall and CPU seconds (training + evaluation).
Read by nbs/03_dpo_loss.ipynb. Runs on one thread.
"""
import argparse, copy, random, time
from pathlib import Path
import pandas as pd
import torch
from dpo_notes.core import set_threads, seed_everything
from dpo_notes.toy import load_toy, load_toy_dataset, reward, MAX_NEW_TOKENS
from dpo_notes.evals import distinct_rate
from dpo_notes.losses import LOSS_TYPES
from dpo_notes.train import DPOConfig, train_dpo
from dpo_notes.online import pad_prompts, sample_completions, completion_logps, sequence_stats, eos_token_ids
from dpo_notes.evals import summarize_outcomes

SMOOTHING = {"exo_pair": 1e-3,     # EXO needs ε > 0 (its paper's value)
             "robust": 0.1}        # rDPO at ε = 0 is DPO; 0.1 is the typical value TRL's docs quote from its paper
                                   # every other loss runs at ε = 0


def offline_pairs(n: int, seed: int) -> list[dict]:
    "`n` pairs of the shipped toy preference set, a seeded sample without replacement (as `dpo_notes.scaling.offline_pairs`)."
    return random.Random(seed).sample(list(load_toy_dataset("prefs", "train")), n)


@torch.no_grad()
def sample(model, tok, prompts, seed):
    "One sampled completion per prompt (temperature 1): texts, finished flags, and the ids/masks to score them."
    ids, mask = pad_prompts(tok, prompts)
    seed_everything(seed)
    c_ids, c_mask, eos = sample_completions(model.eval(), ids, mask, num_samples=1, max_new_tokens=MAX_NEW_TOKENS,
                                            eos_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(c_ids.masked_fill(c_mask == 0, tok.pad_token_id), skip_special_tokens=True)
    return [t.strip() for t in texts], eos.tolist(), (ids, mask, c_ids, c_mask)


@torch.no_grad()
def evaluate(model, sft, tok, prompts, sft_rewards, seed):
    comps, fin, (ids, mask, c_ids, c_mask) = sample(model, tok, prompts, seed)
    kl = sequence_stats(completion_logps(model, ids, mask, c_ids, c_mask), completion_logps(sft, ids, mask, c_ids, c_mask),
                        c_mask, beta=1.0)["kl"]
    rewards = [reward(p, c, f) for p, c, f in zip(prompts, comps, fin)]
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, sft_rewards)]
    res = summarize_outcomes(outcomes)
    return dict(win_rate=res.rate, lo=res.lo, hi=res.hi, n=res.n, kl=kl.mean().item(), distinct_rate=distinct_rate(comps),
                mean_reward=sum(rewards) / len(rewards), finished=sum(fin) / len(fin))


def main(seeds=(0, 1, 2), steps=40, batch_size=32, learning_rate=2e-3, beta=0.1, out="data/loss_zoo_toy.csv",
         loss_types=("SFT",) + LOSS_TYPES, keep: pd.DataFrame | None = None):
    "Train and evaluate every `loss_types` × `seeds`; rows of `keep` (other loss types) are kept in front."
    set_threads(1)
    sft, tok = load_toy("s")
    prompts = [r["prompt"] for r in load_toy_dataset("prompts", "test")]
    rows, t_all = [], time.perf_counter()
    for seed in seeds:
        sft_comps, sft_fin, _ = sample(sft, tok, prompts, seed + 1000)       # the SFT sample each policy sample meets
        sft_rewards = [reward(p, c, f) for p, c, f in zip(prompts, sft_comps, sft_fin)]
        pairs = offline_pairs(steps * batch_size, seed)                        # the same pairs for every loss
        for lt in loss_types:
            t0, c0 = time.perf_counter(), time.process_time()
            if lt == "SFT": model = sft
            else:
                cfg = DPOConfig(output_dir=None, logging_steps=10, loss_type=lt, label_smoothing=SMOOTHING.get(lt, 0.0),
                                max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
                                beta=beta, seed=seed, disable_tqdm=True)   # dpo_notes.scaling.scaling_budget's budget
                model = train_dpo(copy.deepcopy(sft), tok, pairs, cfg).model
            ev = evaluate(model, sft, tok, prompts, sft_rewards, seed)
            rows.append(dict(loss_type=lt, seed=seed, **ev, label_smoothing=SMOOTHING.get(lt, 0.0), steps=steps,
                             pairs=steps * batch_size, learning_rate=learning_rate, beta=beta,
                             seconds=round(time.perf_counter() - t0, 1), cpu_seconds=round(time.process_time() - c0, 1)))
            print(f"seed {seed} {lt:13s} win {ev['win_rate']:.3f} [{ev['lo']:.3f}, {ev['hi']:.3f}] KL {ev['kl']:7.2f} "
                  f"distinct {ev['distinct_rate']:.2f} ({rows[-1]['seconds']:.0f}s)", flush=True)
            df = pd.concat([keep, pd.DataFrame(rows)]) if keep is not None else pd.DataFrame(rows)
            df.to_csv(out, index=False)                                        # after every run: a stopped run keeps its rows
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return df


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="data/loss_zoo_toy.csv")
    ap.add_argument("--loss_types", nargs="+", choices=("SFT",) + LOSS_TYPES, default=None)
    a = ap.parse_args()
    if a.loss_types is None: main(tuple(a.seeds), a.steps, out=a.out)
    else:
        old = pd.read_csv(a.out) if Path(a.out).exists() else None
        keep = old[~old.loss_type.isin(a.loss_types)] if old is not None else None
        main(tuple(a.seeds), a.steps, out=a.out, loss_types=tuple(a.loss_types), keep=keep)
