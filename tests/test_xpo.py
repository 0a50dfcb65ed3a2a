"""XPO (`dpo_notes.xpo`) against TRL 1.0's `XPOTrainer`.

XPO left TRL after 1.0 and TRL 1.0 cannot be installed beside 1.16, so its loss is transcribed below, line for line, from
https://github.com/huggingface/trl/blob/v1.0.0/trl/experimental/xpo/xpo_trainer.py (`XPOTrainer._compute_losses`).
Also: the reference samples of a LoRA policy come from the adapter-disabled model (TRL 1.0 used `get_base_model()`,
which keeps LoRA on), XPO's metrics, the α schedule, and the command line. And the fixes of issue 10 on XPO's side: an
adapter the model arrives with is the reference (it samples and scores), kept pairs weigh the same across
micro-batches; and TRL's `reward_funcs`. (`tests/test_xpo_trl113.py` compares with TRL 1.13.0's own trainer.)
"""
import copy, warnings
import pytest
import torch
from dpo_notes.core import set_threads
from dpo_notes.online import completion_logps, sample_completions, pad_prompts
from dpo_notes.runtime import reference_context
from dpo_notes.xpo import XPOConfig, pad_right, plain_xpo_step, train_xpo, xpo_loss, xpo_step

set_threads()
warnings.filterwarnings("ignore")
from conftest import (PROMPTS, SIX, arriving_adapter, dropping, fake_sample_completions, perturbed,   # noqa: E402
                         tiny, tiny_classifier)    # the tiny model and tokenizer, shared
from references import trl_1_0_compute_losses     # TRL 1.0's loss, transcribed (shared with notebook 11)

@pytest.mark.parity
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("alpha", [1e-5, 0.1])
def test_xpo_loss_equals_trl_1_0(loss_type, alpha):
    "Same per-token log-probs in, same loss out: on real sampled completions of a tiny model (policy != reference)."
    m, tok = tiny(); policy = perturbed(m)
    p_ids, p_mask = pad_prompts(tok, PROMPTS)
    torch.manual_seed(0)
    kw = dict(num_samples=1, max_new_tokens=6, eos_ids=[1], pad_token_id=0)
    m_ids, m_mask, _ = sample_completions(policy, p_ids, p_mask, **kw)
    r_ids, r_mask, _ = sample_completions(m, p_ids, p_mask, **kw)
    W = max(m_ids.shape[1], r_ids.shape[1])
    m_ids, m_mask, r_ids, r_mask = pad_right(m_ids, W, 0), pad_right(m_mask, W, 0), pad_right(r_ids, W, 0), pad_right(r_mask, W, 0)
    lp = lambda model, ids, mask: completion_logps(model, p_ids, p_mask, ids, mask)
    pm, pr = lp(policy, m_ids, m_mask), lp(policy, r_ids, r_mask)
    with torch.no_grad(): rm, rr = lp(m, m_ids, m_mask), lp(m, r_ids, r_mask)
    chosen_mask = torch.tensor([True, False, True])
    loss, dpo, xpo = trl_1_0_compute_losses(pm, pr, rr, rm, chosen_mask, 0.1, alpha, loss_type)
    losses, dpo2, xpo2, _, _ = xpo_loss(pm.sum(1), pr.sum(1), rm.sum(1), rr.sum(1), chosen_mask, 0.1, alpha, loss_type)
    torch.testing.assert_close(losses.mean(), loss); torch.testing.assert_close(dpo2, dpo); torch.testing.assert_close(xpo2, xpo)
    # the gradients agree too (the alpha term is what pushes log pi(y_ref) down)
    g1 = torch.autograd.grad(loss, list(policy.parameters()), retain_graph=True)
    g2 = torch.autograd.grad(losses.mean(), list(policy.parameters()))
    for a, b in zip(g1, g2): torch.testing.assert_close(a, b)

def test_alpha_sign_and_sum():
    "The XPO term is +alpha * (summed) log pi(y_ref|x): it grows with the policy's log-prob of the reference sample."
    z = torch.zeros(2)
    _, _, xpo, _, _ = xpo_loss(z, torch.tensor([-3.0, -10.0]), z, z, torch.tensor([True, True]), 0.1, 0.5)
    torch.testing.assert_close(xpo, torch.tensor([-1.5, -5.0]))

def test_get_base_model_keeps_lora_on():
    "TRL 1.0 sampled the 'reference' of a LoRA policy from `get_base_model()`: that is the policy. We disable the adapter."
    from peft import LoraConfig, get_peft_model
    m, tok = tiny()
    base_logits = m(tok(PROMPTS, return_tensors="pt").input_ids).logits
    pm = get_peft_model(copy.deepcopy(m), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    x = tok(PROMPTS, return_tensors="pt").input_ids
    policy = pm(x).logits
    torch.testing.assert_close(pm.get_base_model()(x).logits, policy)            # TRL 1.0's "reference" = the policy
    assert (policy - base_logits).abs().max() > 1e-2
    with reference_context(pm) as ref: torch.testing.assert_close(ref(x).logits, base_logits)   # ours = the base model

def test_reference_samples_come_from_the_reference():
    "With LoRA, xpo_step's reference completions are the base model's: same seed, same samples as the base model."
    from peft import LoraConfig, get_peft_model
    m, tok = tiny()
    pm = get_peft_model(copy.deepcopy(m), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    p_ids, p_mask = pad_prompts(tok, PROMPTS)
    kw = dict(num_samples=1, max_new_tokens=6, eos_ids=[1], pad_token_id=0, temperature=1.0)
    torch.manual_seed(3)
    with reference_context(pm) as ref: ours, _, _ = sample_completions(ref, p_ids, p_mask, **kw)
    torch.manual_seed(3); base, _, _ = sample_completions(m, p_ids, p_mask, **kw)
    torch.manual_seed(3); trl10, _, _ = sample_completions(pm.get_base_model(), p_ids, p_mask, **kw)
    torch.manual_seed(3); pol, _, _ = sample_completions(pm, p_ids, p_mask, **kw)
    assert torch.equal(ours, base) and torch.equal(trl10, pol)

def test_xpo_step_metrics():
    m, tok = tiny()
    cfg = XPOConfig(max_new_tokens=5, alpha=0.01, beta=0.2)
    loss, met, samples = xpo_step(perturbed(m), m, tok, PROMPTS, lambda p, c: float(len(c.split())), cfg)
    loss.backward()
    names = {"loss", "loss/dpo", "loss/xpo", "objective/kl", "objective/entropy", "objective/model_scores", "objective/ref_scores",
             "objective/scores_margin", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "logps/chosen", "logps/rejected", "val/model_contain_eos_token", "val/ref_contain_eos_token", "alpha", "beta"}
    assert names <= set(met)
    assert met["alpha"] == 0.01 and met["beta"] == 0.2
    assert abs(met["loss"] - (met["loss/dpo"] + met["loss/xpo"])) < 1e-5
    s = torch.tensor(samples["scores"]); B = len(PROMPTS)
    assert samples["a_wins"] == (s[:B] >= s[B:]).tolist()          # tie_rule "first": the policy's sample wins ties

def test_alpha_schedule_and_validation():
    m, tok = tiny()
    cfg = XPOConfig(disable_tqdm=True, alpha=[1e-5, 1e-3], max_steps=4, per_device_train_batch_size=3, max_new_tokens=4, learning_rate=1e-3)
    res = train_xpo(copy.deepcopy(m), tok, PROMPTS * 2, lambda p, c: float(len(c)), cfg)
    assert [r["alpha"] for r in res.history if "alpha" in r] == [1e-5, 1e-5, 1e-3, 1e-3]
    with pytest.raises(ValueError, match="alpha"): XPOConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="alpha"): XPOConfig(alpha=[])

def test_cli_xpo_on_the_toy(tmp_path):
    pytest.importorskip("dpo_notes.toy")
    from dpo_notes.cli import cli_xpo, xpo_from_args
    argv = ["--model_name_or_path", "toy:s", "--max_steps", "2", "--per_device_train_batch_size", "4", "--alpha", "1e-3",
            "--max_new_tokens", "8", "--learning_rate", "1e-3", "--disable_tqdm"]
    res = xpo_from_args(argv + ["--output_dir", str(tmp_path)])
    assert (tmp_path / "model.safetensors").exists()
    assert res.history[-1]["alpha"] == 1e-3 and "loss/xpo" in res.history[-1]
    assert cli_xpo(argv) == 0                              # what `dpo-notes xpo` returns as its exit code


@pytest.mark.parity
def test_full_step_equals_plain_step():
    "xpo_step (lean sampler, prompt-once rows, lean head) computes plain_xpo_step's loss: DPO + alpha * log pi(y~|x)."
    m, tok = tiny(); policy = perturbed(m)
    rf = lambda p, c: float(len(c.split()))
    torch.manual_seed(0)
    full, _, _ = xpo_step(policy, m, tok, PROMPTS, rf, XPOConfig(max_new_tokens=6, temperature=1.0, alpha=0.05))
    torch.manual_seed(0)
    plain, _ = plain_xpo_step(policy, m, tok, PROMPTS, rf, beta=0.1, alpha=0.05, max_new_tokens=6)
    torch.testing.assert_close(full, plain, atol=1e-5, rtol=0)

def test_arriving_adapter_is_the_reference():
    """Issue 10, bug 1, XPO's side: with a trained adapter and no peft_config the reference (which also samples) is
    base + that adapter: step-1 KL 0 and DPO part log 2, and the reference samples are the starting policy's."""
    import math
    from dpo_notes.runtime import make_reference
    m, tok = tiny()
    cfg = XPOConfig(disable_tqdm=True, max_steps=1, per_device_train_batch_size=3, max_new_tokens=5, learning_rate=1e-3, alpha=1e-2)
    res = train_xpo(arriving_adapter(m), tok, PROMPTS, lambda p, c: float(len(c)), cfg)
    h = res.history[0]
    assert abs(h["objective/kl"]) < 1e-4 and abs(h["loss/dpo"] - math.log(2)) < 1e-5, h
    pm = arriving_adapter(m); start = copy.deepcopy(pm)
    assert make_reference(pm) is None
    p_ids, p_mask = pad_prompts(tok, PROMPTS)
    kw = dict(num_samples=1, max_new_tokens=6, eos_ids=[1], pad_token_id=0, temperature=1.0)
    torch.manual_seed(3)
    with reference_context(pm) as ref: ours, _, _ = sample_completions(ref, p_ids, p_mask, **kw)
    torch.manual_seed(3); want, _, _ = sample_completions(start, p_ids, p_mask, **kw)
    assert torch.equal(ours, want)

@pytest.mark.parity
def test_kept_pairs_weigh_the_same_across_micro_batches(monkeypatch):
    "Issue 10, bug 2, in XPO: micro-batches keeping 1 and 3 pairs = one micro-batch of the 4 (the loop is online DPO's)."
    from dpo_notes import online
    monkeypatch.setattr(online, "sample_completions", fake_sample_completions)
    m, tok = tiny()
    first = [SIX[i] for i in online.prompt_batch(6, 3, 0, 0)[0]]
    kw = dict(disable_tqdm=True, max_steps=1, max_new_tokens=4, learning_rate=1e-3, max_grad_norm=0, seed=0, alpha=0.1)
    judge = dropping(set(first[:2]))
    two = train_xpo(copy.deepcopy(m), tok, SIX, judge, XPOConfig(**kw, per_device_train_batch_size=3, gradient_accumulation_steps=2))
    one = train_xpo(copy.deepcopy(m), tok, SIX, judge, XPOConfig(**kw, per_device_train_batch_size=6))
    g2, g1 = two.history[-1]["grad_norm"], one.history[-1]["grad_norm"]
    assert abs(g2 - g1) < 1e-5 * g1, (g2, g1)

def test_train_xpo_with_reward_funcs():
    m, tok = tiny()
    def n_chars(prompts, completions, **kw): return [float(len(c)) for c in completions]
    cfg = XPOConfig(disable_tqdm=True, max_steps=2, per_device_train_batch_size=3, max_new_tokens=4, learning_rate=1e-3,
                    reward_weights=[1.0, 2.0])
    res = train_xpo(copy.deepcopy(m), tok, PROMPTS * 2, cfg=cfg, reward_funcs=[n_chars, tiny_classifier(len(tok))],
                    reward_processing_classes=[None, tok])
    assert len(res.train_df) == 2 and "objective/model_scores" in res.train_df
