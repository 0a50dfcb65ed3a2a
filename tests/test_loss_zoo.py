"""Every loss of `dpo_notes.losses.dpo_loss` (TRL 1.16's fifteen `loss_type`s, weighted lists, f-divergences) and the
per-token pieces of `dpo_notes.logps` (LD-DPO's `ld_alpha`, WPO's `use_weighting`) against TRL 1.16's own
`DPOTrainer._compute_loss`: same loss and same gradient of every policy parameter, on the same batch and models.

One real `DPOTrainer` (one-layer Llama, random fp32 weights, a word-level tokenizer made in memory: no hub) with
`use_weighting=True`, so its fused LM head also returns `log_sum_sq_probs`; each case sets the trainer's loss
attributes as its `DPOConfig` would. Our side reads the per-token log-probs of the same fused head (so the tolerance is
about fp32 rounding of the loss formulas), and, in `test_concatenated_forward_matches_trl`, our own
`concatenated_forward` (lean head) instead.
"""
import warnings

import pytest
import torch

from dpo_notes.core import set_threads
from dpo_notes.losses import LOSS_TYPES, dpo_loss
from dpo_notes.logps import concatenated_forward, ld_token_weights, wpo_weights

pytestmark = pytest.mark.parity     # every test here compares two implementations (tests/parity.py)

set_threads()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from datasets import disable_progress_bars
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer
hf_logging.set_verbosity_error(); disable_progress_bars()

from conftest import PAIRS, tiny_llama, word_tokenizer   # the same tiny batch, tokenizer and model

SMOOTHING = {"robust": 0.2, "exo_pair": 1e-3, "aot": 0.1, "aot_unpaired": 0.1}
CASES = {lt: dict(loss_type=(lt,), label_smoothing=SMOOTHING.get(lt, 0.0)) for lt in LOSS_TYPES}
CASES.update({
    "rpo": dict(loss_type=("sigmoid", "sft"), loss_weights=[1.0, 0.5]),
    "mpo": dict(loss_type=("sigmoid", "bco_pair", "sft"), loss_weights=[0.8, 0.2, 1.0]),
    # every type but 'sigmoid' (with ε > 0 ours is cDPO, TRL's ignores ε; see test_a_wrong_formula_is_caught)
    "all_other_types_at_once": dict(loss_type=LOSS_TYPES[1:], loss_weights=[0.1 * i for i in range(1, 15)], label_smoothing=0.1),
    "forward_kl": dict(f_divergence_type="forward_kl"),
    "js_ipo": dict(loss_type=("ipo",), f_divergence_type="js_divergence"),
    "alpha_0.5_robust": dict(loss_type=("robust",), label_smoothing=0.1, f_divergence_type="alpha_divergence"),
    "alpha_0.3_norm_sft": dict(loss_type=("sigmoid_norm", "sft"), f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3),
    "alpha_1_hinge": dict(loss_type=("hinge",), f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0),
    "alpha_1.5_exo": dict(loss_type=("exo_pair",), label_smoothing=0.01, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.5),
    "js_discopop": dict(loss_type=("discopop",), f_divergence_type="js_divergence"),
    "ld_0.5": dict(ld_alpha=0.5),
    "ld_0_ipo": dict(loss_type=("ipo",), ld_alpha=0.0),
    "ld_0.2_sft": dict(loss_type=("sigmoid", "sft"), ld_alpha=0.2),
    "wpo": dict(use_weighting=True),
    "wpo_ipo_robust": dict(loss_type=("ipo", "robust"), label_smoothing=0.2, use_weighting=True),
    "wpo_ld_nca_apo": dict(loss_type=("nca_pair", "apo_down"), use_weighting=True, ld_alpha=0.5),
})


@pytest.fixture(scope="module")
def trainer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig("/tmp/dpo_notes_test_loss_zoo", per_device_train_batch_size=len(PAIRS), use_weighting=True,
                         report_to="none", use_cpu=True, save_strategy="no", bf16=False)
        tr = DPOTrainer(model=tiny_llama(0), ref_model=tiny_llama(1), args=args, train_dataset=PAIRS,
                        processing_class=word_tokenizer())
    return tr, next(iter(tr.get_train_dataloader()))


def set_case(tr, beta=0.3, loss_type=("sigmoid",), loss_weights=None, label_smoothing=0.0, f_divergence_type="reverse_kl",
             f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False):
    "What TRL's `DPOConfig` with these values would set on the trainer."
    tr.beta, tr.loss_types = beta, list(loss_type)
    tr.loss_weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss_type)
    tr.label_smoothing, tr.f_divergence_type, tr.f_alpha_divergence_coef = label_smoothing, f_divergence_type, f_alpha_divergence_coef
    tr.ld_alpha, tr.use_weighting = ld_alpha, use_weighting


def grads(model):
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return out


def trl_side(tr, batch):
    tr.model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loss = tr.compute_loss(tr.model, batch)
    loss.backward()
    return loss.item(), grads(tr.model)


def our_kwargs(beta=0.3, loss_type=("sigmoid",), loss_weights=None, label_smoothing=0.0, f_divergence_type="reverse_kl",
               f_alpha_divergence_coef=0.5, **_):
    return dict(beta=beta, loss_type=list(loss_type), loss_weights=loss_weights, label_smoothing=label_smoothing,
                f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef)


def our_side(tr, batch, case):
    "Our loss from the per-token log-probs of TRL's fused head, through ld_token_weights, wpo_weights and dpo_loss."
    tr.model.zero_grad()
    mask = batch["completion_mask"][:, 1:]
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], fused_lm_head=True,
              labels=batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100))
    out = tr.model(**kw)
    with torch.no_grad(): ref_lp = tr.ref_model(**kw).log_probs
    ld = case.get("ld_alpha")
    w = mask if ld is None else ld_token_weights(mask, ld)
    (pc, pr), (rc, rr) = (out.log_probs * w).sum(1).chunk(2), (ref_lp * w).sum(1).chunk(2)
    lc, lr = mask.sum(1).chunk(2)
    losses = dpo_loss(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **our_kwargs(**case),
                      sft_chosen_logps=out.log_probs.sum(1).chunk(2)[0] if ld is not None else None,
                      wpo_weights=wpo_weights(out.log_probs, out.log_sum_sq_probs, mask) if case.get("use_weighting") else None)[0]
    loss = losses.mean()
    loss.backward()
    return loss.item(), grads(tr.model)


def max_diff(a, b): return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_trl(trainer, name):
    tr, batch = trainer
    case = CASES[name]
    set_case(tr, **case)
    (t_loss, t_grads), (o_loss, o_grads) = trl_side(tr, batch), our_side(tr, batch, case)
    assert abs(t_loss - o_loss) <= 1e-6 * max(1.0, abs(t_loss)), (t_loss, o_loss)
    assert max(g.abs().max().item() for g in t_grads.values()) > 1e-3      # the case moves the model
    g_max = max(g.abs().max().item() for g in t_grads.values())
    assert max_diff(t_grads, o_grads) <= 1e-6 * max(1.0, g_max)


def test_cases_cover_every_loss_type():
    assert set(LOSS_TYPES) <= set(CASES) and len(LOSS_TYPES) == 15


def test_a_wrong_formula_is_caught(trainer):
    "The harness can fail: TRL's sigmoid against our cDPO (TRL ignores label_smoothing for 'sigmoid', we do not)."
    tr, batch = trainer
    set_case(tr, label_smoothing=0.1)
    t_loss, _ = trl_side(tr, batch)
    o_loss, _ = our_side(tr, batch, dict(label_smoothing=0.1))
    assert abs(t_loss - o_loss) > 1e-3


@pytest.mark.parametrize("name", ["sigmoid", "ld_0.5", "wpo", "wpo_ld_nca_apo", "ld_0.2_sft"])
def test_concatenated_forward_matches_trl(trainer, name):
    "The same through our own lean-head log-probs (`concatenated_forward` with ld_alpha / use_weighting)."
    tr, batch = trainer
    case = CASES[name]
    set_case(tr, **case)
    t_loss, t_grads = trl_side(tr, batch)
    ours = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100))
    fkw = dict(ld_alpha=case.get("ld_alpha"), use_weighting=case.get("use_weighting", False))
    pol = concatenated_forward(tr.model, ours, **fkw)
    with torch.no_grad(): ref = concatenated_forward(tr.ref_model, ours, **fkw)
    losses = dpo_loss(pol["chosen_logps"], pol["rejected_logps"], ref["chosen_logps"], ref["rejected_logps"],
                      chosen_lengths=pol["chosen_lengths"], rejected_lengths=pol["rejected_lengths"], **our_kwargs(**case),
                      sft_chosen_logps=pol.get("sft_chosen_logps"), wpo_weights=pol.get("wpo_weights"))[0]
    loss = losses.mean()
    loss.backward()
    assert abs(t_loss - loss.item()) <= 2e-6 * max(1.0, abs(t_loss))
    assert max_diff(t_grads, grads(tr.model)) <= 2e-6 * max(1.0, max(g.abs().max().item() for g in t_grads.values()))


def test_trl_wpo_with_sft_fails_ours_runs(trainer):
    """TRL 1.16 cannot combine `use_weighting` with 'sft': it scales the expanded (stride-0) SFT tensor in place. Ours
    gives what TRL's code means: the batch-level NLL times the mean WPO weight."""
    tr, batch = trainer
    set_case(tr, loss_type=("sft",), use_weighting=True)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        trl_side(tr, batch)
    plain, _ = our_side(tr, batch, dict(loss_type=("sft",)))
    mask = batch["completion_mask"][:, 1:]
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], fused_lm_head=True,
              labels=batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100))
    with torch.no_grad(): out = tr.model(**kw)
    w = wpo_weights(out.log_probs, out.log_sum_sq_probs, mask)
    weighted, _ = our_side(tr, batch, dict(loss_type=("sft",), use_weighting=True))
    assert abs(weighted - plain * w.mean().item()) < 1e-6 * max(1.0, plain)
