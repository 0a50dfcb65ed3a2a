"""SmolLM2-135M-Instruct loaded in float32 and in bfloat16 (`--dtype`), a LoRA adapter on each, one DPO step on the
same 8 Anthropic HH pairs: the weights' resident bytes and the step's result (loss, log-probs, the adapter's update)
compared. Under LoRA the frozen base takes `--dtype`; peft keeps the adapter in float32 (`autocast_adapter_dtype`).

    python benchmarks/dtype_lora_step.py [--pairs ../shared/data/hh-rlhf-harmless-base-test-500.jsonl]

Each dtype runs in its own process, so the resident-memory figure is that load's alone. On a CPU without native bf16
(no `avx512_bf16`/`amx_bf16` in lscpu) bf16 arithmetic is emulated: expect it slower there, not faster."""
import argparse, json, os, subprocess, sys, time


def rss_mib() -> float:
    "This process's resident set size (MiB), from /proc."
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(dtype: str, pairs: str, out: str) -> None:
    import torch
    from dpo_notes.core import set_threads
    from dpo_notes.runtime import load_policy, lora_config
    from dpo_notes.data import load_preferences
    from dpo_notes.train import DPOConfig, train_dpo
    set_threads()
    before = rss_mib()
    model, tok = load_policy("smollm2", dtype=dtype)
    loaded = rss_mib() - before
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    data = load_preferences(pairs, tokenizer=tok, skip_invalid=True).select(range(8))
    torch.manual_seed(0)
    cfg = DPOConfig(output_dir=None, max_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                    learning_rate=1e-4, max_length=192, max_prompt_length=96, logging_steps=1, disable_tqdm=True, seed=0)
    t0 = time.perf_counter()
    res = train_dpo(model, tok, data, cfg, peft_config=lora_config(r=8, lora_alpha=16, lora_dropout=0.0))
    step_s = time.perf_counter() - t0
    lora = {n: p.detach().float() for n, p in res.model.named_parameters() if "lora_" in n}
    torch.save(lora, out + ".pt")
    row = {k: v for k, v in res.history[-1].items() if k in ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "grad_norm")}
    json.dump({"dtype": dtype, "weights_MiB": weight_bytes / 2**20, "rss_after_load_MiB": loaded, "step_s": step_s,
               "adapter_dtype": str(next(iter(p.dtype for n, p in res.model.named_parameters() if "lora_" in n))), **row},
              open(out + ".json", "w"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                    "hh-rlhf-harmless-base-test-500.jsonl"))
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one: return one(a.one[0], a.pairs, a.one[1])
    import tempfile, torch
    d = tempfile.mkdtemp()
    rows = []
    for dt in ("float32", "bfloat16"):
        subprocess.run([sys.executable, __file__, "--pairs", a.pairs, "--one", dt, f"{d}/{dt}"], check=True)
        rows.append(json.load(open(f"{d}/{dt}.json")))
    fp, bf = (torch.load(f"{d}/{dt}.pt") for dt in ("float32", "bfloat16"))
    # LoRA's B starts at zero: after one step B is the update itself; compare the B matrices (the part that moved)
    keys = [k for k in fp if "lora_B" in k]
    a, b = (torch.cat([t[k].flatten() for k in keys]) for t in (fp, bf))
    moved, diff = float(a.norm()), float((a - b).norm())
    for r in rows: print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    print(json.dumps({"bf16_vs_fp32": {"loss_abs_diff": abs(rows[0]["loss"] - rows[1]["loss"]),
                                       "logps_chosen_abs_diff": abs(rows[0]["logps/chosen"] - rows[1]["logps/chosen"]),
                                       "adapter_update_rel_diff": diff / moved,
                                       # Adam's first step is about lr * sign(gradient): entries whose gradient
                                       # is near zero flip sign under bf16 rounding, so also its direction:
                                       "adapter_update_cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                                       "adapter_update_sign_agreement": float((a.sign() == b.sign()).float().mean()),
                                       "weights_ratio": rows[1]["weights_MiB"] / rows[0]["weights_MiB"]}}))


if __name__ == "__main__":
    main()
