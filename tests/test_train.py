"""Our hand-written DPO loop (`dpo_notes.train`) against TRL 1.16's `DPOTrainer`, plus exact resume and the
precomputed-reference cache. Everything runs on CPU on the shipped toy "s" model in well under a minute."""
import copy, warnings

import pytest
import torch

from dpo_notes.core import set_threads
from dpo_notes.toy import load_toy, load_toy_dataset
from dpo_notes.data import PreferenceCollator
from dpo_notes.train import DPOConfig, dpo_step, make_reference, precompute_ref_logps, prepare_examples, train_dpo

set_threads()
warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def toy():
    model, tok = load_toy("s")
    return model, tok, list(load_toy_dataset("prefs", "train"))[:48]


def trl_records(pairs):
    "TRL tokenises prompt + completion joined with nothing between; the toy format puts a space there."
    return [{"prompt": p["prompt"], "chosen": " " + p["chosen"], "rejected": " " + p["rejected"]} for p in pairs]


def trl_trainer(model, tok, pairs, out, **kw):
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig, DPOTrainer
    args = TRLConfig(output_dir=str(out), report_to=[], bf16=False, gradient_checkpointing=False, use_cpu=True,
                     train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True, logging_steps=1,
                     seed=0, **kw)
    return DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                      train_dataset=Dataset.from_list(trl_records(pairs)), processing_class=tok)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_step_matches_trl(toy, tmp_path, loss_type):
    model, tok, pairs = toy
    B, beta = 6, 0.3
    policy = copy.deepcopy(model).train()
    with torch.no_grad():                       # move the policy off the reference so the rewards are not all 0
        for p in policy.parameters(): p.add_(0.02 * torch.randn_like(p))
    ref = copy.deepcopy(model)
    trainer = trl_trainer(copy.deepcopy(policy), tok, pairs, tmp_path, beta=beta, loss_type=loss_type,
                          per_device_train_batch_size=B)
    trainer.ref_model.load_state_dict(ref.state_dict())
    trainer.model.train()
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(B)])
    trl_loss = trainer.compute_loss(trainer.model, trl_batch).item()
    trl_m = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    cfg = DPOConfig(output_dir=None, beta=beta, loss_type=loss_type)
    batch = PreferenceCollator.from_tokenizer(tok)(prepare_examples(pairs[:B], tok, cfg))
    # same tokens, same completion mask: what we compare below is the step itself
    assert torch.equal(batch["input_ids"], trl_batch["input_ids"])
    assert torch.equal(batch["labels"], trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100))
    loss, m = dpo_step(policy, make_reference(policy, ref), batch, cfg)
    assert abs(loss.item() - trl_loss) < 1e-5
    assert abs(m["loss"] - trl_loss) < 1e-5
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"):
        assert abs(m[k] - trl_m[k]) < 1e-5, (k, m[k], trl_m[k])
    assert abs(m["rewards/margins"]) > 1e-3     # a non-trivial comparison


def test_ten_steps_match_trl(toy, tmp_path):
    model, tok, pairs = toy
    hp = dict(learning_rate=3e-3, per_device_train_batch_size=4, max_steps=10, warmup_steps=3, beta=0.1,
              max_grad_norm=1.0)
    trainer = trl_trainer(copy.deepcopy(model), tok, pairs, tmp_path, **hp)
    trainer.train()
    trl_log = [h for h in trainer.state.log_history if "loss" in h and "rewards/margins" in h]
    ours = train_dpo(copy.deepcopy(model), tok, pairs, DPOConfig(output_dir=None, shuffle=False, logging_steps=1, seed=0,
                                                                 disable_tqdm=True, **hp))
    assert len(ours.history) == len(trl_log) == 10
    for a, b in zip(ours.history, trl_log):
        assert a["step"] == b["step"]
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a["step"], a["loss"], b["loss"])
        assert abs(a["learning_rate"] - b["learning_rate"]) < 1e-12
        assert abs(a["rewards/margins"] - b["rewards/margins"]) < 1e-4
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-3 * max(1.0, b["grad_norm"])
    assert ours.history[-1]["loss"] < ours.history[0]["loss"] - 0.01      # and it learned something


@pytest.mark.parametrize("lora", [False, True])
def test_resume_is_exact(toy, tmp_path, lora):
    model, tok, pairs = toy
    peft_config = None
    if lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    cfg = DPOConfig(output_dir=str(tmp_path / "run"), learning_rate=3e-3, per_device_train_batch_size=4,
                    gradient_accumulation_steps=2, num_train_epochs=2, warmup_steps=0.2, save_steps=3,
                    logging_steps=1, disable_tqdm=True)     # 6 steps per epoch: the resume crosses an epoch boundary
    straight = train_dpo(copy.deepcopy(model), tok, pairs, cfg, peft_config=peft_config)
    # a fresh start from the SFT weights, as a new process would have, then the checkpoint written at step 3
    resumed = train_dpo(copy.deepcopy(model), tok, pairs, cfg, peft_config=peft_config,
                        resume_from_checkpoint=tmp_path / "run" / "checkpoint-3")
    assert len(straight.history) == len(resumed.history) == 12
    for a, b in zip(straight.history, resumed.history):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and a["step"] == b["step"]
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-6


def test_precomputed_reference(toy, tmp_path):
    model, tok, pairs = toy
    cfg = DPOConfig(output_dir=None, per_device_eval_batch_size=5)
    ex = prepare_examples(pairs[:12], tok, cfg)
    collate = PreferenceCollator.from_tokenizer(tok)
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters(): p.add_(0.02 * torch.randn_like(p))
    ref = make_reference(policy, copy.deepcopy(model))
    pre = precompute_ref_logps(policy, ref, ex, collate, cfg, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    batch, batch_pre = collate(ex[:6]), collate(pre[:6])
    l1, m1 = dpo_step(policy, ref, batch, cfg)
    l2, m2 = dpo_step(policy, None, batch_pre, cfg)       # no reference model needed at all
    assert abs(l1.item() - l2.item()) < 1e-5 and abs(m1["rewards/margins"] - m2["rewards/margins"]) < 1e-5
    # the cache is reused for the same weights and tokens (no forward pass: a broken model would fail) ...
    broken = copy.deepcopy(ref); broken.forward = None
    assert precompute_ref_logps(policy, broken, ex, collate, cfg, cache_dir=tmp_path) == pre
    # ... and a new key (so a new file) when the data or the reference weights change
    precompute_ref_logps(policy, ref, ex[:10], collate, cfg, cache_dir=tmp_path)
    with torch.no_grad(): next(ref.parameters()).add_(1e-3)
    precompute_ref_logps(policy, ref, ex, collate, cfg, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_config_rejects_bad_values():
    for kw, field in [({"beta": 0}, "beta"), ({"loss_type": "kto"}, "loss_type"), ({"label_smoothing": 0.5}, "label_smoothing"),
                      ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"), ({"warmup_steps": -1}, "warmup_steps"),
                      ({"max_prompt_length": 600, "max_length": 512}, "max_prompt_length")]:
        with pytest.raises(ValueError, match=field): DPOConfig(**kw)
