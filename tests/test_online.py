"""Online DPO (`dpo_notes.online`) against TRL 1.16's `trl.experimental.online_dpo.OnlineDPOTrainer`.

Parity is checked by driving TRL's real code: its `training_step` on the same model and the same completions (its
`_generate` replaced by a stub returning our samples, its reward function returning fixed scores), then reading
the loss it returns and the metrics it logs. Also: position ids, TRL's β-schedule crash (trl#6801), KL/entropy over
padding (trl#6803), resume, and two processes under `accelerate launch`. And the fixes of issue 10: a LoRA adapter the
model arrives with is the reference (step-0 KL 0, loss log 2), kept pairs weigh the same across micro-batches
(dropped pairs neither tilt nor dilute a step), a NaN loss stops the run naming the step; and TRL's `reward_funcs`.
"""
import copy, json, os, subprocess, sys, tempfile, warnings
import pytest
import torch
from dpo_notes.core import set_threads
from parity import NO_CHECKPOINTING, assert_weights_moved_alike
from conftest import (PROMPTS, SIX, arriving_adapter, dropping, fake_sample_completions, perturbed, tiny,
                      tiny_classifier)
from dpo_notes import judges, online
from dpo_notes.online import (OnlineDPOConfig, OnlineMethod, collect_pairs, pairs_loss, completion_logps, cut_at_eos, judge_pairs, online_dpo_loss, online_dpo_step,
                              sample_completions, schedule_value, sequence_stats, pad_prompts, train_online)

set_threads()
warnings.filterwarnings("ignore")

def trl_trainer(policy, ref, tok, rewards, **kw):
    "A real TRL OnlineDPOTrainer whose reward function returns `rewards` (2B,) in order."
    from datasets import Dataset
    from trl.experimental.online_dpo import OnlineDPOConfig as TRLConfig, OnlineDPOTrainer
    args = TRLConfig(output_dir=tempfile.mkdtemp(), report_to=[], bf16=False, **NO_CHECKPOINTING, use_cpu=True,
                     per_device_train_batch_size=len(PROMPTS), **kw)
    vals = iter(list(rewards))
    return OnlineDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
                            reward_funcs=lambda prompts, completions, **_: [next(vals) for _ in completions], args=args,
                            train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=tok)

def fixed_samples(m, tok, max_new_tokens=6, seed=0):
    torch.manual_seed(seed)
    p_ids, p_mask = pad_prompts(tok, PROMPTS)
    c_ids, c_mask, eos = sample_completions(m, p_ids, p_mask, num_samples=2, max_new_tokens=max_new_tokens, eos_ids=[1], pad_token_id=0)
    return p_ids, p_mask, c_ids, c_mask, eos

@pytest.mark.parity
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_and_metrics_equal_trl(loss_type):
    m, tok = tiny(); policy, ref = perturbed(m), m
    p_ids, p_mask, c_ids, c_mask, eos = fixed_samples(m, tok)
    B = len(PROMPTS)
    scores = torch.tensor([1.0, 0.5, -1.0, 0.5, 2.0, -1.0])     # pair 0: a wins, pair 1: b wins, pair 2: a tie
    tr = trl_trainer(policy, ref, tok, scores.tolist(), beta=0.2, loss_type=loss_type, max_new_tokens=6)
    tr._generate = lambda model, prompts, images=None: (p_ids.repeat(2, 1), p_mask.repeat(2, 1), c_ids, c_mask, None)
    trl_loss = float(tr.training_step(tr.model, {"prompt": PROMPTS}))
    trl = {k: v[-1] for k, v in tr.stats.items()}
    cfg = OnlineDPOConfig(beta=0.2, loss_type=loss_type, tie_rule="first")    # "first" is TRL's `>=`
    from dpo_notes.judges import compare_scores, verdicts_to_mask
    a_wins, keep = verdicts_to_mask([compare_scores(float(scores[i]), float(scores[B + i])) for i in range(B)], "first")
    loss, ours = online_dpo_loss(policy, ref, p_ids, p_mask, c_ids, c_mask, eos, a_wins, keep, cfg, 0.2, scores)
    assert abs(float(loss) - trl_loss) < 1e-5
    same = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
            "val/contain_eos_token", "beta", "objective/scores", "objective/scores_margin"]
    for k in same: assert abs(ours[k] - trl[k]) < 1e-4, (k, ours[k], trl[k])
    # KL and entropy: TRL sums over padding after eos too (trl#6803); ours over completion tokens only.
    pol = completion_logps(policy, p_ids.repeat(2, 1), p_mask.repeat(2, 1), c_ids, torch.ones_like(c_mask))
    rf = completion_logps(ref, p_ids.repeat(2, 1), p_mask.repeat(2, 1), c_ids, torch.ones_like(c_mask))
    assert abs(float((pol - rf).sum(1).mean()) - trl["objective/kl"]) < 1e-4          # TRL = all positions
    assert abs(float(-pol.sum(1).mean()) - trl["objective/entropy"]) < 1e-3
    if (c_mask == 0).any(): assert abs(ours["objective/entropy"] - trl["objective/entropy"]) > 1e-2

@pytest.mark.parity
def test_kl_equal_trl_without_padding():
    "With every completion full length (no eos, no padding) TRL's KL/entropy and ours coincide."
    m, tok = tiny(); policy = perturbed(m)
    p_ids, p_mask = pad_prompts(tok, PROMPTS)
    c_ids = torch.randint(3, len(tok), (2 * len(PROMPTS), 5), generator=torch.Generator().manual_seed(0))
    c_mask, eos = torch.ones_like(c_ids), torch.zeros(2 * len(PROMPTS), dtype=torch.bool)
    scores = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0, 0.5])
    tr = trl_trainer(policy, m, tok, scores.tolist(), beta=0.1, max_new_tokens=5)
    tr._generate = lambda model, prompts, images=None: (p_ids.repeat(2, 1), p_mask.repeat(2, 1), c_ids, c_mask, None)
    tr.training_step(tr.model, {"prompt": PROMPTS}); trl = {k: v[-1] for k, v in tr.stats.items()}
    from dpo_notes.judges import compare_scores, verdicts_to_mask
    a, k = verdicts_to_mask([compare_scores(float(scores[i]), float(scores[3 + i])) for i in range(3)], "first")
    _, ours = online_dpo_loss(policy, m, p_ids, p_mask, c_ids, c_mask, eos, a, k, OnlineDPOConfig(), 0.1, scores)
    for key in ["objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward"]:
        assert abs(ours[key] - trl[key]) < 1e-4, key

@pytest.mark.parity
def test_logps_equal_trl_forward_and_generation():
    "Left-padded prompts: our log-probs = the sampler's (generate's logits) = TRL's `_forward` for a RoPE model."
    m, tok = tiny()
    prompts = ["ann reviews the lamp :", "bob reviews the bike : it is a great"]      # different lengths: left padding
    p_ids, p_mask = pad_prompts(tok, prompts)
    torch.manual_seed(0)
    out = m.generate(input_ids=p_ids, attention_mask=p_mask, do_sample=True, max_new_tokens=6, output_logits=True,
                     return_dict_in_generate=True, pad_token_id=0, eos_token_id=[1], top_k=0)
    c_ids = out.sequences[:, p_ids.shape[1]:]
    gen = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, c_ids[..., None])[..., 0]
    c_ids, c_mask, _ = cut_at_eos(c_ids, [1], 0)
    ours = completion_logps(m, p_ids, p_mask, c_ids, c_mask)
    keep = c_mask.bool()
    torch.testing.assert_close(ours[keep], gen[:, :c_ids.shape[1]][keep], atol=1e-5, rtol=0)
    tr = trl_trainer(m, m, tok, [0.0] * 4, max_new_tokens=6)
    theirs = tr._forward(m, p_ids, p_mask, c_ids, c_mask)
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=0)

def test_position_ids_matter_for_absolute_positions():
    "GPT-2 (learned positions): TRL's `_forward` without position ids drifts from what was sampled on left-padded rows."
    m, tok = tiny(arch="gpt2")
    prompts = ["ann reviews the lamp :", "bob reviews the bike : it is a great"]
    p_ids, p_mask = pad_prompts(tok, prompts)
    torch.manual_seed(0)
    out = m.generate(input_ids=p_ids, attention_mask=p_mask, do_sample=True, max_new_tokens=5, min_new_tokens=5,
                     output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=[1], top_k=0)
    c_ids = out.sequences[:, p_ids.shape[1]:]; c_mask = torch.ones_like(c_ids)
    gen = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, c_ids[..., None])[..., 0]
    ours = completion_logps(m, p_ids, p_mask, c_ids, c_mask)
    torch.testing.assert_close(ours, gen, atol=1e-5, rtol=0)
    theirs = trl_trainer(m, m, tok, [0.0] * 4, max_new_tokens=5)._forward(m, p_ids, p_mask, c_ids, c_mask)
    assert (theirs[0] - gen[0]).abs().max() > 1e-2          # row 0 is left-padded: shifted positions
    torch.testing.assert_close(theirs[1], gen[1], atol=1e-5, rtol=0)   # row 1 has no padding: same

def test_trl_beta_schedule_crashes_ours_works():
    "trl#6801: a list β crashes TRL at the second step (`self._beta[epoch]` with a float epoch); ours follows the epochs."
    from datasets import Dataset
    from trl.experimental.online_dpo import OnlineDPOConfig as TRLConfig, OnlineDPOTrainer
    m, tok = tiny()
    args = TRLConfig(output_dir=tempfile.mkdtemp(), report_to=[], bf16=False, **NO_CHECKPOINTING, use_cpu=True,
                     per_device_train_batch_size=4, max_steps=3, max_new_tokens=4, beta=[0.1, 0.05], save_strategy="no")
    tr = OnlineDPOTrainer(model=copy.deepcopy(m), reward_funcs=lambda completions, **_: [float(len(c)) for c in completions],
                          args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS * 3}), processing_class=tok)
    with pytest.raises(TypeError, match="list indices must be integers"): tr.train()
    assert tr.state.global_step == 1
    cfg = OnlineDPOConfig(disable_tqdm=True, beta=[0.1, 0.05, 0.02], max_steps=7, per_device_train_batch_size=3, max_new_tokens=4, learning_rate=1e-3)
    res = train_online(copy.deepcopy(m), tok, PROMPTS * 2, lambda p, c: float(len(c)), cfg)
    betas = [r["beta"] for r in res.history if "beta" in r]
    assert betas == [0.1, 0.1, 0.05, 0.05, 0.02, 0.02, 0.02]          # 2 steps per epoch, then the last value
    assert schedule_value([0.1, 0.05], 0.99) == 0.1 and schedule_value([0.1, 0.05], 7.5) == 0.05

def test_eos_checked_on_completion_tokens_only():
    "A pad == eos tokenizer left-pads prompts with eos: that must not count as a finished completion."
    ids = torch.tensor([[5, 6, 7, 8], [5, 1, 0, 0], [1, 6, 7, 1]])
    out, mask, eos = cut_at_eos(ids, [1], 0)
    assert eos.tolist() == [False, True, True]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert out.tolist() == [[5, 6, 7, 8], [5, 1, 0, 0], [1, 0, 0, 0]]
    # missing_eos_penalty applies to the completion that did not end, whatever the prompt holds
    a, k, s = judge_pairs(lambda p, c: 1.0, ["x"], ["a"], ["b"], [False], [True], missing_eos_penalty=2.0)
    assert s.tolist() == [-1.0, 1.0] and a.tolist() == [False] and k.tolist() == [True]

def test_tie_rules():
    fixed = lambda p, c: 1.0                                   # every pair ties
    prompts = ["x"] * 200
    a, k, _ = judge_pairs(fixed, prompts, ["a"] * 200, ["b"] * 200, [True] * 200, [True] * 200, tie_rule="first")
    assert a.all() and k.all()
    a, k, _ = judge_pairs(fixed, prompts, ["a"] * 200, ["b"] * 200, [True] * 200, [True] * 200, tie_rule="random",
                          generator=torch.Generator().manual_seed(0))
    assert 60 < int(a.sum()) < 140 and k.all()
    a, k, _ = judge_pairs(fixed, prompts, ["a"] * 200, ["b"] * 200, [True] * 200, [True] * 200, tie_rule="skip")
    assert not k.any()
    with pytest.raises(ValueError, match="tie_rule"): OnlineDPOConfig(tie_rule="coin")

def test_resume_continues_to_the_same_numbers():
    m, tok = tiny()
    reward = lambda p, c: float(c.count("great") - c.count("awful"))
    kw = dict(disable_tqdm=True, max_steps=6, per_device_train_batch_size=3, max_new_tokens=5, learning_rate=1e-3, beta=[0.1, 0.05])
    straight = train_online(copy.deepcopy(m), tok, PROMPTS * 3, reward, OnlineDPOConfig(**kw))
    with tempfile.TemporaryDirectory() as d:
        train_online(copy.deepcopy(m), tok, PROMPTS * 3, reward, OnlineDPOConfig(**kw, save_steps=3, output_dir=d))
        resumed = train_online(copy.deepcopy(m), tok, PROMPTS * 3, reward, OnlineDPOConfig(**kw, output_dir=d + "/again"),
                               resume_from_checkpoint=os.path.join(d, "checkpoint-3"))
    l1 = [r["loss"] for r in straight.history]; l2 = [r["loss"] for r in resumed.history]
    assert len(l1) == len(l2) == 6
    torch.testing.assert_close(torch.tensor(l1), torch.tensor(l2), atol=1e-6, rtol=0)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()): torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

def test_lora_reference_is_the_adapter_disabled():
    from peft import LoraConfig
    m, tok = tiny()
    res = train_online(copy.deepcopy(m), tok, PROMPTS * 2, lambda p, c: float(len(c)),
                       OnlineDPOConfig(disable_tqdm=True, max_steps=2, per_device_train_batch_size=3, max_new_tokens=4, learning_rate=1e-2),
                       peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert res.ref_model is None and hasattr(res.model, "disable_adapter")
    x = tok(PROMPTS, return_tensors="pt").input_ids
    with res.model.disable_adapter(): torch.testing.assert_close(res.model(x).logits, m(x).logits)

def test_config_validation():
    for bad, field in [(dict(beta=0), "beta"), (dict(beta=[0.1, -1]), "beta"), (dict(loss_type="kto"), "loss_type"),
                       (dict(temperature=0), "temperature"), (dict(top_p=1.5), "top_p"), (dict(missing_eos_penalty=-1), "missing_eos_penalty"),
                       (dict(max_length=10, max_new_tokens=64), "max_length")]:
        with pytest.raises(ValueError, match=field): OnlineDPOConfig(**bad)

def test_cli_on_the_toy(tmp_path):
    pytest.importorskip("dpo_notes.toy")
    from dpo_notes.cli import cli_online_dpo, online_dpo_from_args
    argv = ["--model_name_or_path", "toy:s", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--max_new_tokens", "8", "--learning_rate", "1e-3", "--disable_tqdm"]
    res = online_dpo_from_args(argv + ["--output_dir", str(tmp_path)])
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "history.json").exists()
    assert {"loss", "objective/kl", "objective/scores", "rewards/accuracies"} <= set(res.history[-1])
    assert cli_online_dpo(argv) == 0                       # what `dpo-notes online-dpo` returns as its exit code

DDP_SCRIPT = r'''
import hashlib, json, os, sys, torch
sys.path.insert(0, os.environ["TEST_DIR"])
from conftest import tiny, PROMPTS
from dpo_notes.online import OnlineDPOConfig, train_online
from accelerate import Accelerator
acc = Accelerator(cpu=True)
m, tok = tiny()
cfg = OnlineDPOConfig(disable_tqdm=True, max_steps=3, per_device_train_batch_size=2, max_new_tokens=4, learning_rate=1e-2, gradient_accumulation_steps=2)
res = train_online(m, tok, PROMPTS * 4, lambda p, c: float(len(c)), cfg, accelerator=acc)
h = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in res.model.parameters())).hexdigest()
with open(os.path.join(os.environ["OUT_DIR"], f"rank{acc.process_index}.json"), "w") as f:
    json.dump({"hash": h, "world": acc.num_processes, "loss": [r["loss"] for r in res.history]}, f)
'''

@pytest.mark.parity
def test_two_processes_stay_in_sync(tmp_path):
    "Two CPU processes (gloo DDP, launched by torchrun): the ranks sample different completions, yet end with equal weights."
    script = tmp_path / "ddp.py"; script.write_text(DDP_SCRIPT)
    env = dict(os.environ, TEST_DIR=os.path.dirname(__file__), OUT_DIR=str(tmp_path), DPO_NOTES_THREADS="1", OMP_NUM_THREADS="1")
    # on CPU `accelerate launch` only starts several processes through mpirun, so we use torchrun (what it wraps on
    # GPUs); Accelerator() reads the same environment variables either way
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", str(script)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert a["world"] == b["world"] == 2
    assert a["hash"] == b["hash"]                 # gradients were all-reduced
    assert a["loss"] == b["loss"]                 # logged metrics are averaged over ranks


# ------------------------------------------------------------------------------------------- issue 10 and issue 12

def one_step(m, tok, prompts, judge, **kw):
    cfg = OnlineDPOConfig(disable_tqdm=True, max_steps=1, max_new_tokens=4, learning_rate=1e-3, max_grad_norm=0, seed=0, **kw)
    return train_online(copy.deepcopy(m), tok, prompts, judge, cfg)

@pytest.mark.parity
def test_kept_pairs_weigh_the_same_across_micro_batches(monkeypatch):
    """Issue 10, bug 2: 2 micro-batches keeping 1 and 3 pairs must give the gradient of the mean over the 4 kept pairs,
    what one micro-batch of all 6 prompts gives. (Before: each micro-batch's mean halved, the lone pair weighed 3x.)"""
    monkeypatch.setattr(online, "sample_completions", fake_sample_completions)
    m, tok = tiny()
    first = [SIX[i] for i in online.prompt_batch(6, 3, 0, 0)[0]]
    judge = dropping(set(first[:2]))                          # micro-batch 1 keeps 1 pair, micro-batch 2 keeps 3
    two = one_step(m, tok, SIX, judge, per_device_train_batch_size=3, gradient_accumulation_steps=2)
    one = one_step(m, tok, SIX, judge, per_device_train_batch_size=6)
    g2, g1 = two.history[-1]["grad_norm"], one.history[-1]["grad_norm"]
    assert abs(g2 - g1) < 1e-5 * g1, (g2, g1)
    assert abs(two.history[-1]["loss"] - one.history[-1]["loss"]) < 1e-6
    # after the Adam step: equal up to the share of the update rounding noise can steer (tests/parity.py)
    assert_weights_moved_alike(two.model.parameters(), one.model.parameters(), m.parameters())

@pytest.mark.parity
def test_empty_micro_batch_does_not_dilute(monkeypatch):
    "A micro-batch whose pairs all fail adds nothing and does not scale the step down."
    monkeypatch.setattr(online, "sample_completions", fake_sample_completions)
    m, tok = tiny()
    second = [SIX[i] for i in online.prompt_batch(6, 3, 1, 0)[0]]
    first = [SIX[i] for i in online.prompt_batch(6, 3, 0, 0)[0]]
    two = one_step(m, tok, SIX, dropping(set(second)), per_device_train_batch_size=3, gradient_accumulation_steps=2)
    one = one_step(m, tok, first, dropping(set()), per_device_train_batch_size=3)
    assert abs(two.history[-1]["grad_norm"] - one.history[-1]["grad_norm"]) < 1e-5 * one.history[-1]["grad_norm"]

def test_nan_loss_stops_before_the_update(tmp_path):
    m, tok = tiny()
    calls = []
    def poisoned(model, ref_model, batch, cfg, epoch=0.0, denominator=None):
        loss, met = online.pairs_loss(model, ref_model, batch, cfg, epoch, denominator); calls.append(1)
        return (loss * float("nan") if len(calls) == 2 else loss), met
    cfg = OnlineDPOConfig(disable_tqdm=True, max_steps=3, per_device_train_batch_size=3, max_new_tokens=4, learning_rate=1e-3,
                          save_steps=1, output_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match="step 2"):
        train_online(copy.deepcopy(m), tok, PROMPTS * 2, lambda p, c: float(len(c)), cfg,
                     step_fn=online.OnlineMethod("poisoned", online.collect_pairs, poisoned))
    # the last good step's checkpoint, and the history logged up to the failure (written as it goes)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "history.jsonl"]
    assert [json.loads(line)["step"] for line in (tmp_path / "history.jsonl").read_text().splitlines()] == [1]

def test_arriving_adapter_is_the_reference():
    """Issue 10, bug 1: a model with a trained adapter and no peft_config is scored against base + that adapter:
    at step 1 the policy is the reference, KL 0 and loss log 2. (Before: the base model, KL and loss off.)"""
    import math
    m, tok = tiny()
    pm = arriving_adapter(m)
    x = tok(PROMPTS, return_tensors="pt").input_ids
    assert (pm(x).logits - m(x).logits).abs().max() > 1e-2           # the adapter really changes the model
    cfg = OnlineDPOConfig(disable_tqdm=True, max_steps=1, per_device_train_batch_size=3, max_new_tokens=5, learning_rate=1e-3,
                          tie_rule="random")
    res = train_online(pm, tok, PROMPTS, lambda p, c: float(len(c)), cfg)
    h = res.history[0]
    assert abs(h["objective/kl"]) < 1e-4 and abs(h["loss"] - math.log(2)) < 1e-5, h
    assert res.ref_model is None and "ref" in res.model.peft_config

@pytest.mark.parity
def test_full_step_equals_plain_step():
    "The fast step (lean sampler, prompt-once rows, lean head) computes the plain step's loss."
    m, tok = tiny(); policy = perturbed(m)
    rf = lambda p, c: float(len(c.split()))
    torch.manual_seed(0)
    full, _, _ = online_dpo_step(policy, m, tok, PROMPTS, rf, OnlineDPOConfig(max_new_tokens=6, temperature=1.0))
    torch.manual_seed(0)
    plain, _ = online.plain_online_step(policy, m, tok, PROMPTS, rf, beta=0.1, max_new_tokens=6)
    torch.testing.assert_close(full, plain, atol=1e-5, rtol=0)

@pytest.mark.parity
def test_reward_funcs_equal_trl():
    "A callable and a tiny random sequence classifier, weighted: our scores = TRL 1.16's `_calculate_rewards_from_functions`."
    m, tok = tiny(); rm = tiny_classifier(len(tok))
    def n_words(prompts, completions, **kw): return [float(len(c.split())) for c in completions]
    comps = ["great lamp .", "it is bad", "a good bike", "awful", "the chair", "good good good"]
    ours = judges.RewardFunctions([n_words, rm], [0.5, -2.0], [None, tok]).score(PROMPTS * 2, comps)
    tr = trl_trainer(m, m, tok, [0.0] * 6)
    tr.reward_funcs, tr.reward_processing_classes = [n_words, rm], [None, tok]
    tr.reward_weights = torch.tensor([0.5, -2.0])
    theirs = tr._calculate_rewards_from_functions(PROMPTS * 2, comps, [[0]] * 6)
    torch.testing.assert_close(torch.tensor(ours), theirs.float(), atol=1e-5, rtol=0)

def test_reward_funcs_failure_rules():
    "None from any reward function: the completion is unscorable and its pair dropped, never won (TRL: nansum counts 0)."
    m, tok = tiny()
    def picky(prompts, completions, completion_ids=None):
        assert completion_ids is not None and len(completion_ids) == len(completions)
        return [None if "awful" in c else 1.0 for c in completions]
    judge = judges.RewardFunctions([picky, tiny_classifier(len(tok))], None, [None, tok])
    a, k, s = judge_pairs(judge, PROMPTS, ["awful", "good", "good"], ["good", "awful", "great"], [True] * 3, [True] * 3,
                          completion_ids=torch.zeros(6, 2, dtype=torch.long))
    assert k.tolist() == [False, False, True] and torch.isnan(s[0]) and torch.isnan(s[4])
    with pytest.raises(ValueError, match="reward_weights"): judges.RewardFunctions([picky, picky], [1.0])
    with pytest.raises(ValueError, match="sequence-classification"): judges.RewardFunctions([m], None, [tok])
    with pytest.raises(ValueError, match="reward_processing_classes"): judges.RewardFunctions([picky, picky], None, [None])
    with pytest.raises(ValueError, match="both"): train_online(m, tok, PROMPTS, picky, OnlineDPOConfig(), reward_funcs=[picky])

def test_train_online_with_reward_funcs():
    "TRL's reward interface end to end: a callable and a classifier, weighted."
    m, tok = tiny()
    seen = []
    def count(prompts, completions, **kw): seen.append((prompts[0], kw.get("completion_ids") is not None)); return [float(len(c)) for c in completions]
    cfg = OnlineDPOConfig(disable_tqdm=True, max_steps=2, per_device_train_batch_size=3, max_new_tokens=4, learning_rate=1e-3,
                          reward_weights=[1.0, 0.5])
    res = train_online(copy.deepcopy(m), tok, PROMPTS * 2, cfg=cfg, reward_funcs=[count, tiny_classifier(len(tok))],
                       reward_processing_classes=[None, tok])
    assert len(res.train_df) == 2 and all(torch.isfinite(torch.tensor(res.train_df["objective/scores"].values)))
    assert seen and seen[0][1]                                   # **kwargs functions get completion_ids, as in TRL

def test_step_fn_is_a_method():
    "`step_fn` takes an `OnlineMethod` (a benchmark wraps `collect_pairs` to time each micro-batch); anything else is refused."
    m, tok = tiny(); calls = []
    def timed_collect(*a, **k): calls.append(1); return collect_pairs(*a, **k)
    cfg = OnlineDPOConfig(disable_tqdm=True, max_steps=2, per_device_train_batch_size=3, max_new_tokens=4, learning_rate=1e-3,
                          gradient_accumulation_steps=2)
    res = train_online(copy.deepcopy(m), tok, PROMPTS * 2, lambda p, c: float(len(c)), cfg,
                       step_fn=OnlineMethod("timed", timed_collect, pairs_loss))
    assert len(calls) == 4 and len(res.train_df) == 2
    with pytest.raises(ValueError, match="step_fn"): train_online(m, tok, PROMPTS, lambda p, c: 1.0, cfg, step_fn=3)
    with pytest.raises(ValueError, match="step_fn"): train_online(m, tok, PROMPTS, lambda p, c: 1.0, cfg, step_fn=online_dpo_step)
