"""`dpo_notes.losses.dpo_loss` against TRL 1.16's `DPOTrainer._compute_loss`, on its real code path.

TRL computes the DPO-family losses inline in `_compute_loss`. We build a real `DPOTrainer` around a
one-layer Llama with random weights (a word-level tokenizer made in memory: no hub), take one batch
from its data loader, let `compute_loss` run the policy and reference forwards, and compare its loss
and logged `rewards/*` metrics with `dpo_loss` fed the log-probs of the same batch.
"""
import math, warnings

import pytest
import torch

from dpo_notes.core import set_threads
from dpo_notes.losses import dpo_loss, LOSS_TYPES

pytestmark = pytest.mark.parity     # every test here compares two implementations (tests/parity.py)

set_threads()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from datasets import Dataset, disable_progress_bars
    from transformers import LlamaConfig
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer
hf_logging.set_verbosity_error(); disable_progress_bars()
from conftest import PAIRS, PAIR_WORDS as WORDS, tiny_llama, word_tokenizer   # the tiny batch, tokenizer and model, shared

def make_trainer(loss_type, beta, label_smoothing, seed=0, dtype=torch.float32):
    with warnings.catch_warnings():   # transformers' deprecation notices raised from inside TRL
        warnings.simplefilter("ignore", FutureWarning)
        args = DPOConfig("/tmp/dpo_notes_test_losses", per_device_train_batch_size=len(PAIRS), beta=beta,
                         loss_type=[loss_type], label_smoothing=label_smoothing, report_to="none", use_cpu=True,
                         save_strategy="no", seed=seed,
                         bf16=False)   # the default bf16=True autocasts the reference forward on CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model=tiny_llama(seed, dtype), ref_model=tiny_llama(seed + 100, dtype), args=args,
                          train_dataset=PAIRS, processing_class=word_tokenizer())


def fused_logps(model, batch):
    "Per-row summed completion log-probs from TRL's fused LM head, as `_compute_loss` gets them: chosen (B,), rejected (B,)."
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    return out.log_probs.sum(1).chunk(2)


def naive_logps(model, batch):
    "The same sums from full logits, log_softmax and gather, in float64."
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    lp = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (lp * batch["completion_mask"][:, 1:]).sum(-1).chunk(2)


def run_both(loss_type, beta, label_smoothing=0.0, seed=0):
    tr = make_trainer(loss_type, beta, label_smoothing, seed)
    batch = next(iter(tr.get_train_dataloader()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trl_loss = tr.compute_loss(tr.model, batch).item()
    metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}
    logps = [*fused_logps(tr.model, batch), *fused_logps(tr.ref_model, batch)]
    naive = [*naive_logps(tr.model, batch), *naive_logps(tr.ref_model, batch)]
    lc, lr = batch["completion_mask"].sum(1).chunk(2)
    kw = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, chosen_lengths=lc, rejected_lengths=lr)
    return trl_loss, metrics, dpo_loss(*logps, **kw), dpo_loss(*naive, **kw), logps, naive


CASES = ([("sigmoid", b, 0.0) for b in (0.01, 0.1, 0.5, 2.0)]
         + [("ipo", b, 0.0) for b in (0.1, 0.3, 1.0)]
         + [("hinge", b, 0.0) for b in (0.1, 0.5, 2.0)]
         + [("robust", b, e) for b in (0.1, 0.5) for e in (0.0, 0.1, 0.3, 0.45)])


@pytest.mark.parametrize("loss_type,beta,label_smoothing", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_trl(loss_type, beta, label_smoothing, seed):
    trl_loss, m, (losses, rc, rr), (naive_losses, _, _), logps, naive = run_both(loss_type, beta, label_smoothing, seed)
    for a, b in zip(logps, naive): torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=0)
    assert abs(losses.mean().item() - trl_loss) < 1e-6
    # from independent float64 log-probs: equal up to TRL's fp32 arithmetic
    assert abs(naive_losses.mean().item() - trl_loss) < 1e-6 * max(1.0, abs(trl_loss))
    assert abs(rc.mean().item() - m["rewards/chosen"]) < 1e-6
    assert abs(rr.mean().item() - m["rewards/rejected"]) < 1e-6
    assert abs((rc - rr).mean().item() - m["rewards/margins"]) < 1e-6
    assert abs((rc > rr).float().mean().item() - m["rewards/accuracies"]) < 1e-6


def test_cases_are_loss_types():
    """These four are checked here over many betas and smoothing values (with float64 naive log-probs too);
    tests/test_loss_zoo.py covers all fifteen, lists, f-divergences, LD-DPO and WPO, values and gradients."""
    assert {c[0] for c in CASES} == {"sigmoid", "ipo", "hinge", "robust"} < set(LOSS_TYPES)


def test_ipo_without_lengths_is_the_summed_form():
    "Without lengths our IPO is the paper's summed form, which differs from TRL's as soon as lengths differ."
    trl_loss, _, _, _, logps, _ = run_both("ipo", 0.3)
    summed = dpo_loss(*logps, beta=0.3, loss_type="ipo")[0].mean().item()
    assert abs(summed - trl_loss) > 1e-3


def test_reference_logps_at_the_reference_give_log2():
    "Policy = reference (TRL's starting point when ref_model is a copy): every pair's loss is log 2."
    tr = make_trainer("sigmoid", 0.1, 0.0)
    tr.ref_model.load_state_dict(tr.model.state_dict())
    batch = next(iter(tr.get_train_dataloader()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert abs(tr.compute_loss(tr.model, batch).item() - math.log(2)) < 1e-6
    pc, pr = fused_logps(tr.model, batch)
    losses, rc, rr = dpo_loss(pc, pr, pc, pr, beta=0.1)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
    assert (rc == 0).all() and (rr == 0).all()


def test_gradient_matches_trl():
    "The gradient TRL backpropagates into the policy equals ours through the same log-probs."
    tr = make_trainer("sigmoid", 0.5, 0.0)
    batch = next(iter(tr.get_train_dataloader()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tr.compute_loss(tr.model, batch).backward()
    theirs = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
    tr.model.zero_grad()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    out = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    pc, pr = out.log_probs.sum(1).chunk(2)
    rc, rr = fused_logps(tr.ref_model, batch)
    dpo_loss(pc, pr, rc, rr, beta=0.5)[0].mean().backward()
    for n, p in tr.model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[n], atol=1e-6, rtol=1e-5)


def test_bt_nll_matches_trl_reward_trainer():
    "`dpo_notes.bt.bt_nll` (with margins) and `pairwise_accuracy(tie=0)` are TRL `RewardTrainer`'s loss and `accuracy`."
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer
    from dpo_notes.bt import bt_nll, pairwise_accuracy
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.5,
                      pad_token_id=0, eos_token_id=1, bos_token_id=None, num_labels=1)
    data = Dataset.from_dict({"chosen": ["a b c d", "c e", "d e f g", "h a"],
                              "rejected": ["a b e", "c f g h", "d e f a b", "h b"],
                              "margin": [0.0, 0.5, -1.0, 2.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = RewardConfig("/tmp/dpo_notes_test_rm", per_device_train_batch_size=4, report_to="none", use_cpu=True,
                            save_strategy="no", bf16=False)
        tr = RewardTrainer(model=LlamaForSequenceClassification(cfg), args=args, train_dataset=data,
                           processing_class=word_tokenizer())
    batch = dict(next(iter(tr.get_train_dataloader())))
    margin = batch["margin"]
    theirs = tr.compute_loss(tr.model, dict(batch)).item()
    with torch.no_grad():
        r = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    rc, rr = r.chunk(2)
    assert abs(bt_nll(rc, rr, margin=margin).mean().item() - theirs) < 1e-6
    assert abs(pairwise_accuracy(rc, rr, tie=0.0) - tr._metrics["train"]["accuracy"][-1]) < 1e-6
