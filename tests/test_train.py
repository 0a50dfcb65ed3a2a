"""Our hand-written DPO loop (`dpo_notes.train`) against TRL 1.16's `DPOTrainer` (the step with TRL's loss options,
ten steps, an arriving LoRA adapter, TR-DPO), plus exact resume, the precomputed-reference cache and TR-DPO under LoRA.
Everything runs on CPU on the shipped toy "s" model."""
import copy, json, math, warnings

import pytest
import torch

from dpo_notes.core import set_threads
from dpo_notes.toy import load_toy, load_toy_dataset
from dpo_notes.data import PreferenceCollator
from dpo_notes.runtime import REF_ADAPTER, make_reference
from dpo_notes.logps import packed_forward
from dpo_notes.train import (DPOConfig, dpo_step, mix_low_rank, plain_dpo_step,
                             plain_dpo_train, precompute_ref_logps, prepare_examples, ref_cache_key, train_dpo)
import dpo_notes.train as train
from parity import NO_CHECKPOINTING, assert_logs_match, assert_weights_moved_alike

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
    args = TRLConfig(output_dir=str(out), report_to=[], bf16=False, **NO_CHECKPOINTING, use_cpu=True,
                     train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True, logging_steps=1,
                     seed=0, **kw)
    return DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                      train_dataset=Dataset.from_list(trl_records(pairs)), processing_class=tok)


STEP_OPTIONS = [dict(loss_type="sigmoid"), dict(loss_type="ipo"), dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
                dict(ld_alpha=0.5), dict(use_weighting=True), dict(f_divergence_type="js_divergence"),
                dict(loss_type="exo_pair", label_smoothing=1e-3), dict(loss_type=["sigmoid", "sft"], ld_alpha=0.3)]


@pytest.mark.parity
@pytest.mark.parametrize("padding_free", [True, False])
@pytest.mark.parametrize("opts", STEP_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_step_matches_trl(toy, tmp_path, opts, padding_free):
    "The trainer's step with TRL's loss options (lists with weights, LD-DPO, WPO, f-divergences) equals TRL's, packed or padded."
    model, tok, pairs = toy
    B, beta = 6, 0.3
    policy = copy.deepcopy(model).train()
    torch.manual_seed(0)
    with torch.no_grad():                       # move the policy off the reference so the rewards are not all 0
        for p in policy.parameters(): p.add_(0.02 * torch.randn_like(p))
    ref = copy.deepcopy(model)
    trainer = trl_trainer(copy.deepcopy(policy), tok, pairs, tmp_path, beta=beta, per_device_train_batch_size=B, **opts)
    trainer.ref_model.load_state_dict(ref.state_dict())
    trainer.model.train()
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(B)])
    trl_loss = trainer.compute_loss(trainer.model, trl_batch).item()
    trl_m = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    cfg = DPOConfig(output_dir=None, beta=beta, padding_free=padding_free, **opts)
    batch = PreferenceCollator.from_tokenizer(tok)(prepare_examples(pairs[:B], tok, cfg))
    # same tokens, same completion mask: what we compare below is the step itself
    assert torch.equal(batch["input_ids"], trl_batch["input_ids"])
    assert torch.equal(batch["labels"], trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100))
    loss, m = dpo_step(policy, make_reference(policy, ref), batch, cfg)
    assert abs(loss.item() - trl_loss) < 1e-5 * max(1.0, abs(trl_loss)), (loss.item(), trl_loss)
    assert abs(m["loss"] - trl_loss) < 1e-5 * max(1.0, abs(trl_loss))
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"):
        assert abs(m[k] - trl_m[k]) < 1e-5 * max(1.0, abs(trl_m[k])), (k, m[k], trl_m[k])
    assert abs(m["rewards/margins"]) > 1e-3     # a non-trivial comparison
    if opts == STEP_OPTIONS[0] and padding_free:  # the plain step of the notebook's first half gives the same numbers
        pl, pm = plain_dpo_step(policy, ref, batch, beta=beta)
        assert abs(pl.item() - trl_loss) < 1e-5 and abs(pm["rewards/margins"] - trl_m["rewards/margins"]) < 1e-5


@pytest.mark.parity
def test_ten_steps_match_trl(toy, tmp_path):
    """Ten steps with warmup and clipping, ours against TRL 1.16: step 1 tightly, later steps and the final weights
    relative to how far training moved them (`tests/parity.py` says why Adam makes that the right bound)."""
    model, tok, pairs = toy
    hp = dict(learning_rate=3e-3, per_device_train_batch_size=4, max_steps=10, warmup_steps=3, beta=0.1,
              max_grad_norm=1.0)
    trainer = trl_trainer(copy.deepcopy(model), tok, pairs, tmp_path, **hp)
    trainer.train()
    trl_log = [h for h in trainer.state.log_history if "loss" in h and "rewards/margins" in h]
    ours = train_dpo(copy.deepcopy(model), tok, pairs, DPOConfig(output_dir=None, shuffle=False, logging_steps=1, seed=0,
                                                                 disable_tqdm=True, **hp))
    assert len(ours.history) == len(trl_log) == 10
    assert [a["step"] for a in ours.history] == [b["step"] for b in trl_log]
    for a, b in zip(ours.history, trl_log):
        assert abs(a["learning_rate"] - b["learning_rate"]) < 1e-12      # the schedule is exact arithmetic
    assert_logs_match(ours.history, trl_log, ("loss", "rewards/margins", "rewards/chosen", "grad_norm"))
    assert_weights_moved_alike(ours.model.parameters(), trainer.model.parameters(), model.parameters())
    assert ours.history[-1]["loss"] < ours.history[0]["loss"] - 0.01      # and it learned something


@pytest.mark.parametrize("lora,tr_dpo", [(False, False), (True, False), (False, True), (True, True)])
def test_resume_is_exact(toy, tmp_path, lora, tr_dpo):
    model, tok, pairs = toy
    peft_config = None
    if lora:
        from peft import LoraConfig
        peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    cfg = DPOConfig(output_dir=str(tmp_path / "run"), learning_rate=3e-3, per_device_train_batch_size=4,
                    gradient_accumulation_steps=2, num_train_epochs=2, warmup_steps=0.2, save_steps=3,
                    logging_steps=1, disable_tqdm=True,      # 6 steps per epoch: the resume crosses an epoch boundary
                    sync_ref_model=tr_dpo, ref_model_sync_steps=2)   # TR-DPO: the reference moves at steps 2, 4, ...
    straight = train_dpo(copy.deepcopy(model), tok, pairs, cfg, peft_config=peft_config)
    # a fresh start from the SFT weights, as a new process would have, then the checkpoint written at step 3
    resumed = train_dpo(copy.deepcopy(model), tok, pairs, cfg, peft_config=peft_config,
                        resume_from_checkpoint=tmp_path / "run" / "checkpoint-3")
    la, lb = straight.train_df, resumed.train_df
    assert len(la) == len(lb) == 12 and la.step.tolist() == lb.step.tolist()
    assert (la.loss - lb.loss).abs().max() < 1e-6
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-6
    if tr_dpo and lora: assert any(f".{REF_ADAPTER}." in k for k in sa)
    if tr_dpo and not lora:
        ra, rb = straight.ref_model.state_dict(), resumed.ref_model.state_dict()
        assert max((ra[k] - rb[k]).abs().max().item() for k in ra) < 1e-6


def test_resume_from_an_epochs_last_step(toy, tmp_path):
    "A checkpoint written at an epoch's last step (all its micro-batches used) resumes into the next epoch exactly."
    model, tok, pairs = toy
    cfg = DPOConfig(output_dir=str(tmp_path / "run"), learning_rate=3e-3, per_device_train_batch_size=4,
                    gradient_accumulation_steps=2, num_train_epochs=2, save_steps=6, logging_steps=1,
                    disable_tqdm=True)                        # 12 micro-batches, 6 steps per epoch
    straight = train_dpo(copy.deepcopy(model), tok, pairs, cfg)
    saved = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert (saved["step"], saved["epoch"], saved["micro"]) == (6, 0, 12)   # epoch 0 used up, not yet the next
    resumed = train_dpo(copy.deepcopy(model), tok, pairs, cfg, resume_from_checkpoint=tmp_path / "run" / "checkpoint-6")
    assert len(resumed.step_times) == 6
    la, lb = straight.train_df, resumed.train_df
    assert la.epoch.tolist() == pytest.approx([s / 6 for s in range(1, 13)])
    assert la.step.tolist() == lb.step.tolist() and (la.loss - lb.loss).abs().max() < 1e-6
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
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
                      ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "loss_weights"), ({"ld_alpha": -0.1}, "ld_alpha"),
                      ({"f_divergence_type": "tv"}, "f_divergence_type"), ({"loss_type": "aot", "use_weighting": True}, "use_weighting"),
                      ({"loss_type": "bco_pair", "f_divergence_type": "forward_kl"}, "f_divergence_type"),
                      ({"ref_model_mixup_alpha": 1.5}, "ref_model_mixup_alpha"), ({"ref_model_sync_steps": 0}, "ref_model_sync_steps"),
                      ({"sync_ref_model": True, "precompute_ref_log_probs": True}, "sync_ref_model"),
                      ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"), ({"warmup_steps": -1}, "warmup_steps"),
                      ({"max_prompt_length": 600, "max_length": 512}, "max_prompt_length")]:
        with pytest.raises(ValueError, match=field): DPOConfig(**kw)


def trained_adapter(model, seed=0):
    "A LoRA model whose adapter is already trained (non-zero B), as after an SFT-with-LoRA run."
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                           target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.5)
    return lora


def test_arriving_adapter_is_the_reference(toy):
    "Issue 10, bug 1: a model that arrives with a trained adapter is scored against base + that adapter."
    import math
    model, tok, pairs = toy
    cfg = DPOConfig(output_dir=None, max_steps=1, logging_steps=1, per_device_train_batch_size=8, shuffle=False,
                    disable_tqdm=True)
    h = train_dpo(trained_adapter(model), tok, pairs[:8], cfg).history[0]
    assert abs(h["loss"] - math.log(2)) < 1e-6, h["loss"]          # the policy *is* the reference at step 0
    assert abs(h["rewards/chosen"]) < 1e-6 and abs(h["rewards/margins"]) < 1e-6
    # the precomputed path and its cache use the same reference
    h = train_dpo(trained_adapter(model), tok, pairs[:8], DPOConfig(**{**cfg.__dict__, "precompute_ref_log_probs": True})).history[0]
    assert abs(h["loss"] - math.log(2)) < 1e-6, h["loss"]


@pytest.mark.parity
def test_arriving_adapter_matches_trl(toy, tmp_path):
    "Four steps from a trained adapter, ours against TRL 1.16 (which copies the adapter into a frozen 'ref' adapter)."
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig, DPOTrainer
    model, tok, pairs = toy
    hp = dict(learning_rate=3e-3, per_device_train_batch_size=4, max_steps=4, beta=0.1, max_grad_norm=1.0)
    args = TRLConfig(output_dir=str(tmp_path), report_to=[], bf16=False, **NO_CHECKPOINTING, use_cpu=True,
                     train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True, logging_steps=1,
                     seed=0, **hp)
    trainer = DPOTrainer(model=trained_adapter(model), ref_model=None, args=args,
                         train_dataset=Dataset.from_list(trl_records(pairs)), processing_class=tok)
    assert "ref" in trainer.model.peft_config
    trainer.train()
    trl_log = [h for h in trainer.state.log_history if "loss" in h and "rewards/margins" in h]
    ours = train_dpo(trained_adapter(model), tok, pairs, DPOConfig(output_dir=None, shuffle=False, logging_steps=1, seed=0,
                                                                   disable_tqdm=True, **hp)).history
    assert len(ours) == len(trl_log) == 4
    assert abs(trl_log[0]["loss"] - math.log(2)) < 1e-5                 # the arriving adapter is TRL's reference too
    assert_logs_match(ours, trl_log, ("loss", "rewards/chosen", "rewards/margins", "logps/chosen"))


def test_cache_key_follows_the_reference_adapter(toy):
    "The cache key hashes the arriving adapter's frozen copy (a changed starting adapter: a new key), not the trained one."
    model, tok, pairs = toy
    cfg = DPOConfig(output_dir=None)
    ex = prepare_examples(pairs[:4], tok, cfg)
    lora = trained_adapter(model)
    make_reference(lora)
    key = ref_cache_key(lora, None, ex, cfg)
    q = lora.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad(): q.lora_B["default"].weight.add_(1.0)
    assert ref_cache_key(lora, None, ex, cfg) == key
    with torch.no_grad(): q.lora_B[REF_ADAPTER].weight.add_(1.0)
    assert ref_cache_key(lora, None, ex, cfg) != key


def test_cdpo_warns_once():
    "Issue 10, bug 4: label_smoothing with 'sigmoid' is cDPO here, ignored by TRL 1.16: one warning per process."
    train._CDPO_WARNED[0] = False
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        DPOConfig(label_smoothing=0.1); DPOConfig(label_smoothing=0.2); DPOConfig(loss_type="robust", label_smoothing=0.1)
    msgs = [str(x.message) for x in w if "cDPO" in str(x.message)]
    assert len(msgs) == 1 and "TRL 1.16 ignores label_smoothing" in msgs[0], msgs
    train._CDPO_WARNED[0] = False
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        DPOConfig(loss_type="robust", label_smoothing=0.1)
    assert not [x for x in w if "cDPO" in str(x.message)]


@pytest.mark.parity
def test_plain_loop_step_equals_trainer_step(toy):
    "One step of `plain_dpo_train` and of `train_dpo` (no clipping, no warmup) leave the same weights."
    model, tok, pairs = toy
    a = copy.deepcopy(model)
    plain_dpo_train(a, tok, pairs[:8], learning_rate=1e-3, batch_size=8, seed=3)
    b = train_dpo(copy.deepcopy(model), tok, pairs[:8], DPOConfig(output_dir=None, learning_rate=1e-3, max_steps=1,
                  max_grad_norm=0, per_device_train_batch_size=8, seed=3, disable_tqdm=True)).model
    # one Adam step: equal up to the share of the update that rounding noise can steer (tests/parity.py)
    assert_weights_moved_alike(b.parameters(), a.parameters(), model.parameters())


@pytest.mark.parity
def test_tr_dpo_matches_trl(toy, tmp_path):
    "TR-DPO with a full model: our losses and our reference weights after the syncs equal TRL 1.16's (sync_ref_model=True)."
    model, tok, pairs = toy
    hp = dict(learning_rate=3e-3, per_device_train_batch_size=4, max_steps=6, beta=0.1, max_grad_norm=1.0,
              sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.6)
    trainer = trl_trainer(copy.deepcopy(model), tok, pairs, tmp_path, **hp)
    trainer.train()
    trl_log = [h for h in trainer.state.log_history if "loss" in h and "rewards/margins" in h]
    ours = train_dpo(copy.deepcopy(model), tok, pairs, DPOConfig(output_dir=None, shuffle=False, logging_steps=1, seed=0,
                                                                 disable_tqdm=True, **hp))
    log = ours.train_df.to_dict("records")
    assert len(log) == len(trl_log) == 6
    assert [h["step"] for h in ours.history if "ref_sync/rel_error" in h] == [2, 4, 6]
    assert_logs_match(log, trl_log, ("loss", "rewards/margins", "rewards/chosen"))
    assert abs(log[-1]["rewards/chosen"]) > 1e-4           # after a sync the reference differs from the start
    # the reference, a mix of past policies, moved like TRL's (relative to how far it moved: Adam, see parity.py)
    assert_weights_moved_alike(ours.ref_model.parameters(), trainer.ref_model.parameters(), model.parameters(),
                               what="reference")
    assert_weights_moved_alike(ours.model.parameters(), trainer.model.parameters(), model.parameters(), what="policy")


def test_mix_low_rank_is_the_best_rank_r_mix():
    torch.manual_seed(0)
    B1, A1, B2, A2 = torch.randn(40, 3), torch.randn(3, 30), torch.randn(40, 3), torch.randn(3, 30)
    W = 0.3 * B1 @ A1 + 0.7 * B2 @ A2
    B, A, err = mix_low_rank(B1, A1, B2, A2, 0.3)
    U, S, Vh = torch.linalg.svd(W.double())
    assert torch.allclose(B @ A, (U[:, :3] * S[:3] @ Vh[:3]).float(), atol=1e-4)
    assert abs(err - float(S[3:].norm() / S.norm())) < 1e-6 and err > 0.1
    B, A, err = mix_low_rank(B1, A1, B1 @ torch.randn(3, 3), A2, 0.3)        # shared column space: exact
    assert err < 1e-6


def test_tr_dpo_lora_mixes_effective_weights(toy):
    "Under LoRA the 'ref' adapter's delta after a sync is α·ΔW_θ + (1−α)·ΔW_ref to within the logged truncation error."
    from peft import LoraConfig
    model, tok, pairs = toy
    alpha, snaps = 0.6, {}
    def delta(m, adapter):
        m = m.module if hasattr(m, "module") else m
        return {n: (mod.lora_B[adapter].weight @ mod.lora_A[adapter].weight).detach().clone()
                for n, mod in m.named_modules() if hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {})}
    orig = train.tr_dpo_sync
    def spy(run):                                 # around the one sync, after step 3's update
        snaps["ref_before"] = delta(run.model, REF_ADAPTER)
        record = orig(run)
        snaps["pol"], snaps["ref_after"] = delta(run.model, "default"), delta(run.model, REF_ADAPTER)
        return record
    train.tr_dpo_sync = spy
    try:
        res = train_dpo(copy.deepcopy(model), tok, pairs, DPOConfig(output_dir=None, max_steps=3, logging_steps=1,
                        per_device_train_batch_size=8, learning_rate=1e-2, sync_ref_model=True, ref_model_sync_steps=3,
                        ref_model_mixup_alpha=alpha, disable_tqdm=True),
                        peft_config=LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    finally: train.tr_dpo_sync = orig
    err = [h["ref_sync/rel_error"] for h in res.history if "ref_sync/rel_error" in h]
    assert len(err) == 1
    worst = 0.0
    for k, want in ((k, alpha * snaps["pol"][k] + (1 - alpha) * snaps["ref_before"][k]) for k in snaps["pol"]):
        rel = float((snaps["ref_after"][k] - want).norm() / want.norm().clamp(min=1e-12))
        assert rel <= err[0] + 1e-5, (k, rel, err[0]); worst = max(worst, rel)
    assert abs(worst - err[0]) < 1e-4            # the logged error is the largest one


def test_checkpointing_uses_the_current_name(toy):
    "`cfg.gradient_checkpointing` turns activation checkpointing on through transformers' current API (no v6 warning)."
    from dpo_notes.runtime import setup_policy
    model, _, _ = toy
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        m = setup_policy(copy.deepcopy(model), None, DPOConfig(output_dir=None, gradient_checkpointing=True))
    assert any(getattr(x, "gradient_checkpointing", False) for x in m.modules())
