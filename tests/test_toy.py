"Checks of the toy world and its shipped assets (data/): run with `pytest tests/test_toy.py`."
import hashlib, importlib.util, json, random
from pathlib import Path
import pytest, torch
from dpo_notes.core import data_dir, set_threads
from dpo_notes import toy
from dpo_notes.evals import generate

set_threads(1)

def _make_toy_script():
    spec = importlib.util.spec_from_file_location("make_toy", data_dir() / "make_toy.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

@pytest.fixture(scope="module")
def tok(): return toy.load_toy_tokenizer()

@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(1)
    ps = toy.sample_prompts(500, "train", seed=rng) + toy.sample_prompts(100, "test", seed=rng)
    return [(p, toy.sample_completion(p, rng)) for p in ps]

def test_tokenizing_prompt_and_completion_separately_equals_joined(tok, corpus):
    for p, c in corpus:
        joined = tok(p + " " + c)["input_ids"]
        assert tok(p)["input_ids"] + tok(c)["input_ids"] == joined
        assert tok(p + " " + c + tok.eos_token)["input_ids"] == joined + [tok.eos_token_id]
        assert tok.decode(joined) == p + " " + c
        assert tok.unk_token_id not in joined

def test_special_tokens(tok):
    assert tok.pad_token_id != tok.eos_token_id and 0 not in (tok.pad_token_id, tok.eos_token_id)
    assert tok.bos_token is None and getattr(tok, "chat_template", None) is None
    assert tok("alice reviews the phone :", add_special_tokens=True)["input_ids"] == tok("alice reviews the phone :")["input_ids"]
    assert tok.get_vocab() == toy.build_toy_tokenizer().get_vocab()

def test_splits_hold_out_name_product_pairs():
    train, test = toy.split_name_products()
    assert not set(train) & set(test)
    assert {p for _, p in train} == set(toy.PRODUCTS) == {p for _, p in test}
    train_prompts = set(toy.toy_prompts("train"))
    assert not train_prompts & set(toy.toy_prompts("test"))

def test_reward_is_linear_in_features_and_bounded(corpus):
    for p, c in corpus:
        for fin in (True, False):
            f = toy.features(p, c, fin)
            r = toy.reward(p, c, fin)
            assert r == sum(toy.REWARD_WEIGHTS[k] * f[k] for k in toy.FEATURES) <= toy.MAX_REWARD
            assert toy.reward_breakdown(p, c, fin)["reward"] == r
    p = toy.make_prompt("kate", "bicycle", 1)
    assert toy.reward(p, "the bicycle is superb . the brake is great . i love the gear .") == toy.MAX_REWARD
    assert toy.reward(p, "it is great . it is great . it is great .") < toy.reward(p, "it is great .")

def test_load_toy_models(tok):
    expected = {"s": 168_704, "m": 1_083_392, "l": 3_805_184}
    for size, n in expected.items():
        model, t = toy.load_toy(size)
        assert toy.count_params(model) == n and not model.training and model.dtype == torch.float32
        assert model.config.tie_word_embeddings and model.config.vocab_size == len(t)
        assert model.generation_config.eos_token_id == t.eos_token_id and model.generation_config.top_k == 0
    with pytest.raises(ValueError, match="size"): toy.load_toy("xxl")

@pytest.mark.parity
def test_generate_left_padding_matches_single_prompts(tok):
    model, _ = toy.load_toy("m")
    qs = [toy.make_prompt("alice", "phone"), toy.make_prompt("zoe", "tent", 3), toy.make_prompt("bob", "kettle", 2)]
    batched, fin = generate(model, tok, qs, do_sample=False)
    assert batched == [generate(model, tok, [q], do_sample=False)[0][0] for q in qs]
    torch.manual_seed(0); a = generate(model, tok, qs, n=4)
    torch.manual_seed(0); b = generate(model, tok, qs, n=4)
    assert a == b and len(a[0]) == 12

def test_sft_models_are_mediocre(tok):
    "Every size, sampled on test prompts, sits well below the reference and well above nonsense."
    rows = toy.load_toy_dataset("prompts", "test").select(range(0, 256, 4))
    for size in toy.TOY_SIZES:
        model, _ = toy.load_toy(size)
        torch.manual_seed(0)
        c, f = generate(model, tok, rows["prompt"])
        rs = [toy.reward(p, x, fi) for p, x, fi in zip(rows["prompt"], c, f)]
        wr = toy.win_rate_vs(rs, rows["reference_reward"])
        assert -1.0 < sum(rs) / len(rs) < 1.5 and 0.03 < wr < 0.35, (size, sum(rs) / len(rs), wr)

def test_datasets_consistent():
    for split in ("train", "test"):
        prefs = toy.load_toy_dataset("prefs", split)
        prompts = set(toy.toy_prompts(split))
        assert len(prefs) > (3000 if split == "train" else 300)
        for r in prefs:
            assert r["prompt"] in prompts
            assert toy.reward(r["prompt"], r["chosen"]) == r["chosen_reward"] > r["rejected_reward"] == toy.reward(r["prompt"], r["rejected"])
            assert "<eos>" not in r["chosen"] + r["rejected"]
            assert r["chosen"].strip() and r["rejected"].strip()          # make_toy drops empty samples (issue 10)
        pr = toy.load_toy_dataset("prompts", split)
        assert pr["prompt"] == toy.toy_prompts(split)
    with pytest.raises(ValueError, match="split"): toy.load_toy_dataset("prefs", "validation")

def test_every_shipped_pair_is_valid():
    "The loader keeps every shipped pair: none is skipped as invalid (the 6 empty completions of issue 10 are gone)."
    import warnings
    from dpo_notes.data import normalize_preferences
    for split, n in (("train", 4559), ("test", 436)):
        prefs = toy.load_toy_dataset("prefs", split)
        with warnings.catch_warnings():
            warnings.simplefilter("error")                                # a skipped record would warn
            assert len(normalize_preferences(prefs)) == len(prefs) == n

def test_prompt_datasets_regenerate_exactly():
    mk = _make_toy_script()
    for split in ("train", "test"):
        shipped = [json.loads(l) for l in open(data_dir() / f"toy_prompts_{split}.jsonl")]
        assert mk.make_prompts(split) == shipped

def test_manifest_hashes_and_size():
    out = data_dir()
    manifest = json.loads((out / "toy_manifest.json").read_text())
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 25e6

def test_make_prefs_drops_empty_samples(monkeypatch):
    "A pair with an empty sample (the model stopped at once) is never written, even when the rewards differ."
    mk = _make_toy_script()
    p = toy.toy_prompts("test")[0]
    fake = ["", "the phone is great .", "the phone is great . it is superb .", "it is awful ."]
    monkeypatch.setattr(mk.toy, "toy_prompts", lambda split: [p])
    monkeypatch.setattr(mk, "generate", lambda model, tok, prompts, n: (fake, [True] * 4))
    rows = mk.make_prefs(None, None, "test")                          # k = 2 pairs: ("", ...) and (..., ...)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(fake[2], fake[3])]

def test_prefs_test_split_regenerates_exactly():
    "make_toy's pairs for the test split equal the shipped file (the same sampler, seed and filters)."
    mk = _make_toy_script()
    model, tok = toy.load_toy("s")
    shipped = [json.loads(l) for l in open(data_dir() / "toy_prefs_test.jsonl")]
    assert mk.make_prefs(model, tok, "test") == shipped
