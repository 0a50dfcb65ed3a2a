"""Regenerate every toy asset in data/ (tokenizer, SFT checkpoints, datasets), deterministically.

    python data/make_toy.py                  # everything: ~10 min on one free CPU thread (14 min measured on a busy 2-core box)
    python data/make_toy.py --skip-train     # only the datasets, from the checkpoints already in --out
    python data/make_toy.py --sizes s --out /tmp/toy   # a subset, elsewhere

The task itself (vocabulary, grammar, reward, corpus generator, SFT loop and recipes) lives in
`dpo_notes.toy` (nbs/01_toy.ipynb); this script only runs the asset-building steps in order and writes
`toy_manifest.json` (recipes, losses, timings and a sha256 per file, to check a rebuild is identical).
Everything runs on one CPU thread with fixed seeds and deterministic torch algorithms.
"""
import argparse, hashlib, json, random, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without installing
from dpo_notes.core import data_dir, seed_everything, set_threads
from dpo_notes import toy
from dpo_notes.evals import generate

SEED = 0
PREF_PAIRS = {"train": 3, "test": 2}     # sampled pairs per prompt before dropping ties / unfinished samples
REFERENCE_N = 8                          # the reference is the best of this many generator samples

def write_jsonl(rows, path):
    with open(path, "w") as f:
        for r in rows: f.write(json.dumps(r) + "\n")
    print(f"wrote {path.name}: {len(rows)} rows")

def gen_config(tok):
    "Sampling defaults saved with each checkpoint; top_k=0 because transformers would otherwise default to 50."
    from transformers import GenerationConfig
    return GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=toy.MAX_NEW_TOKENS,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)

def build_model(size, tok, out):
    "Train SFT model `size` with its recipe and save it (weights, config, generation config, tokenizer)."
    recipe = toy.SFT_RECIPES[size]
    seed_everything(SEED)
    model = toy.make_toy_model(size, tok, seed=SEED)
    print(f"== SFT {size}: {toy.count_params(model):,} parameters, {recipe}", flush=True)
    t0 = time.time()
    losses = toy.train_sft(model, tok, seed=SEED, log_every=100, **recipe)
    secs = time.time() - t0
    model.generation_config = gen_config(tok)
    model.save_pretrained(out / f"toy-{size}"); save_tokenizer(tok, out / f"toy-{size}")
    return dict(params=toy.count_params(model), **recipe, batch_size=32, seconds=round(secs, 1),
                final_loss=round(sum(losses[-50:]) / 50, 4))

def make_prompts(split):
    "Every prompt of `split` with its best-of-8 reference completion."
    rng = random.Random(f"reference-{split}")
    rows = []
    for p in toy.toy_prompts(split):
        ref = toy.best_of_n(p, REFERENCE_N, rng)
        rows.append(dict(prompt=p, reference=ref, reference_reward=toy.reward(p, ref)))
    return rows

def make_prefs(model, tok, split):
    "Pairs of `s` SFT samples per prompt, judged by the toy reward; ties, unfinished and empty samples dropped."
    prompts, k = toy.toy_prompts(split), PREF_PAIRS[split]
    torch.manual_seed(SEED + (split == "test"))
    comps, fins = generate(model, tok, prompts, n=2 * k)      # row s·B + i: sample s of prompt i
    rows, B = [], len(prompts)
    for i, p in enumerate(prompts):
        for j in range(k):
            a, b = 2 * j * B + i, (2 * j + 1) * B + i              # pair j: samples 2j and 2j + 1
            if not (fins[a] and fins[b]): continue
            if not (comps[a].strip() and comps[b].strip()): continue   # stopped at once: data.normalize_preference rejects it
            ra, rb = toy.reward(p, comps[a]), toy.reward(p, comps[b])
            if ra == rb: continue
            (c, rc), (r, rr) = sorted([(comps[a], ra), (comps[b], rb)], key=lambda x: -x[1])
            rows.append(dict(prompt=p, chosen=c, rejected=r, chosen_reward=rc, rejected_reward=rr))
    return rows

def save_tokenizer(tok, path):
    "Save the tokenizer; name its class PreTrainedTokenizerFast so transformers 4.x loads it too (5.x maps it)."
    tok.save_pretrained(path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

def sha256(path): return hashlib.sha256(path.read_bytes()).hexdigest()

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the repository's data/)")
    ap.add_argument("--sizes", default="s,m,l", help="which SFT checkpoints to train, comma-separated")
    ap.add_argument("--skip-train", action="store_true", help="reuse the checkpoints already in --out")
    a = ap.parse_args(argv)
    out = a.out or data_dir(); out.mkdir(parents=True, exist_ok=True)
    set_threads(1); torch.use_deterministic_algorithms(True)
    t_start = time.time()
    manifest_path = out / "toy_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.setdefault("models", {})

    tok = toy.build_toy_tokenizer()
    save_tokenizer(tok, out / "tokenizer")
    if not a.skip_train:
        for size in [s for s in a.sizes.split(",") if s]:
            manifest["models"][size] = build_model(size, tok, out)

    for split in ("train", "test"):
        write_jsonl(make_prompts(split), out / f"toy_prompts_{split}.jsonl")
    from transformers import LlamaForCausalLM
    s_model = LlamaForCausalLM.from_pretrained(out / "toy-s", dtype=torch.float32).eval()
    for split in ("train", "test"):
        write_jsonl(make_prefs(s_model, tok, split), out / f"toy_prefs_{split}.jsonl")

    manifest.pop("seconds_last_run", None)
    manifest["last_run"] = dict(trained=[] if a.skip_train else [s for s in a.sizes.split(",") if s],
                                seconds=round(time.time() - t_start, 1))
    manifest["torch"], manifest["seed"] = torch.__version__, SEED
    files = sorted(p for pat in ("tokenizer/*", "toy-*/*", "toy_*.jsonl") for p in out.glob(pat) if p.is_file())
    manifest["sha256"] = {p.relative_to(out).as_posix(): sha256(p) for p in files}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"done in {manifest['last_run']['seconds']:.0f}s; data/ holds {sum(p.stat().st_size for p in files)/1e6:.1f} MB")

if __name__ == "__main__":
    main()
