"""`dpo_notes.logps` against TRL 1.16's DPOTrainer, and padding-side invariance.

Tiny random models built from configs (no download); the whole file runs in ~15 s on one CPU thread.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from dpo_notes.core import set_threads
from dpo_notes.logps import concatenated_forward, get_batch_logps, selective_logps
from parity import NO_CHECKPOINTING

pytestmark = pytest.mark.parity     # every test here compares two implementations (tests/parity.py)

set_threads(1)
V, H = 1000, 32


def _llama(seed=0, offset=True):
    "A 2-layer Llama with vocab 1000; `offset` adds a common vector to every head row so mean logits are not ~0."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                      initializer_range=0.2)
    m = LlamaForCausalLM(cfg)
    if offset:
        with torch.no_grad(): m.lm_head.weight += torch.randn(H)
    return m


def _tokenizer():
    "A word-level tokenizer over 'w3'..'w999' with <pad>=0, <eos>=1, built in memory."
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, V)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def _dataset(n=4, seed=1):
    from datasets import Dataset
    g = torch.Generator().manual_seed(seed)
    words = lambda k: " ".join(f"w{i}" for i in torch.randint(3, V, (k,), generator=g).tolist())
    lens = [(3, 4, 2), (5, 1, 6), (2, 7, 3), (4, 3, 3)][:n]
    return Dataset.from_list([dict(prompt=words(p), chosen=" " + words(c), rejected=" " + words(r)) for p, c, r in lens])


def _trainer(tmp_path, model, ref_model=None, peft_config=None, beta=0.1):
    from trl import DPOConfig, DPOTrainer
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=4, max_length=None,
                     use_cpu=True, bf16=False, logging_strategy="no", save_strategy="no", beta=beta,
                     dataloader_num_workers=0, disable_dropout=True, **NO_CHECKPOINTING)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=_dataset(),
                      processing_class=_tokenizer(), peft_config=peft_config)


def _our_batch(trl_batch):
    "TRL's collated batch (completion_mask) → our contract (labels with -100 on prompt and padding)."
    return dict(input_ids=trl_batch["input_ids"], attention_mask=trl_batch["attention_mask"],
                labels=trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100))


def _last_metrics(trainer):
    ms = trainer._metrics["train"] or trainer._metrics["eval"]
    return {k: v[-1] for k, v in ms.items()}


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=tol, rtol=tol)


def test_dpo_trainer_parity(tmp_path):
    "Our log-probs, mean logits and sigmoid loss equal what TRL's DPOTrainer computes for the same batch."
    policy = _llama(0)
    ref = copy.deepcopy(policy)
    with torch.no_grad():                                  # a reference that differs, so the loss is not log 2
        for p in ref.parameters(): p.add_(0.05 * torch.randn_like(p))
    trainer = _trainer(tmp_path, copy.deepcopy(policy), ref_model=copy.deepcopy(ref), beta=0.1)
    trl_batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer._compute_loss(trainer.model, trl_batch, False)
    m = _last_metrics(trainer)
    batch = _our_batch(trl_batch)

    # per sequence: TRL's own fused-head call, exactly as in `_compute_loss`
    with torch.no_grad():
        trl_logps = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  labels=batch["labels"], fused_lm_head=True).log_probs.sum(1)
    ours = concatenated_forward(policy, batch)
    with torch.no_grad(): ours_ref = concatenated_forward(ref, batch)
    _close(torch.cat([ours["chosen_logps"], ours["rejected_logps"]]), trl_logps)
    _close(ours["chosen_logps"].mean(), m["logps/chosen"]); _close(ours["rejected_logps"].mean(), m["logps/rejected"])
    _close(ours["mean_chosen_logits"], m["logits/chosen"]); _close(ours["mean_rejected_logits"], m["logits/rejected"])
    assert abs(m["logits/chosen"]) > 0.1                   # the offset made the mean-logit check meaningful
    cm, rm = trl_batch["completion_mask"][:, 1:].chunk(2)
    assert ours["chosen_lengths"].tolist() == cm.sum(1).tolist() and ours["rejected_lengths"].tolist() == rm.sum(1).tolist()

    # the loss and reward metrics, from our numbers
    beta = 0.1
    cr = beta * (ours["chosen_logps"] - ours_ref["chosen_logps"]); rr = beta * (ours["rejected_logps"] - ours_ref["rejected_logps"])
    loss = -F.logsigmoid(cr - rr).mean()
    _close(loss, trl_loss); _close(cr.mean(), m["rewards/chosen"]); _close(rr.mean(), m["rewards/rejected"])
    assert abs(trl_loss.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3

    # and the gradients of that loss
    trl_loss.backward(); loss.backward()
    trl_grads = dict(trainer.model.named_parameters())
    for n, p in policy.named_parameters():
        _close(p.grad, trl_grads[n].grad, tol=1e-5)


def test_dpo_trainer_parity_peft(tmp_path):
    "With a LoRA policy, TRL takes the reference from the disabled adapter; so do we."
    from peft import LoraConfig
    lc = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = _trainer(tmp_path, _llama(0), peft_config=lc)
    trl_batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer._compute_loss(trainer.model, trl_batch, False)
    m = _last_metrics(trainer)
    batch, pm = _our_batch(trl_batch), trainer.model
    ours = concatenated_forward(pm, batch)
    with torch.no_grad(), pm.disable_adapter(): ours_ref = concatenated_forward(pm, batch)
    _close(ours["chosen_logps"].mean(), m["logps/chosen"]); _close(ours["rejected_logps"].mean(), m["logps/rejected"])
    _close(ours["mean_chosen_logits"], m["logits/chosen"]); _close(ours["mean_rejected_logits"], m["logits/rejected"])
    loss = -F.logsigmoid(0.1 * ((ours["chosen_logps"] - ours_ref["chosen_logps"]) - (ours["rejected_logps"] - ours_ref["rejected_logps"]))).mean()
    _close(loss, trl_loss)
    assert abs(m["rewards/chosen"]) > 1e-4                 # the adapter moves the policy away from the reference
    (g_ours,) = torch.autograd.grad(loss, [p for n, p in pm.named_parameters() if "lora_B" in n][:1])
    (g_trl,) = torch.autograd.grad(trl_loss, [p for n, p in pm.named_parameters() if "lora_B" in n][:1])
    _close(g_ours, g_trl)


def _pref_batch(pairs, pad_side):
    seqs = [p + c for p, c, r in pairs] + [p + r for p, c, r in pairs]
    labs = [[-100] * len(p) + c for p, c, r in pairs] + [[-100] * len(p) + r for p, c, r in pairs]
    T = max(map(len, seqs))
    ids, am, lb = [], [], []
    for s, l in zip(seqs, labs):
        n = T - len(s)
        if pad_side == "right": ids.append(s + [0] * n); am.append([1] * len(s) + [0] * n); lb.append(l + [-100] * n)
        else: ids.append([0] * n + s); am.append([0] * n + [1] * len(s)); lb.append([-100] * n + l)
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am), labels=torch.tensor(lb))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("lean", [True, False])
def test_left_right_padding(arch, lean):
    "Same per-sequence values whatever the padding side: position ids come from the attention mask."
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = _llama(0) if arch == "llama" else GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=H, n_layer=2, n_head=4,
                                                                        n_positions=64, initializer_range=0.2))
    model.eval()                                           # GPT-2 has dropout: switch it off, gradients still flow
    g = torch.Generator().manual_seed(3)
    R = lambda n: torch.randint(3, V, (n,), generator=g).tolist()
    pairs = [(R(3), R(4), R(2)), (R(6), R(1), R(5)), (R(2), R(7), R(3))]
    right, left = _pref_batch(pairs, "right"), _pref_batch(pairs, "left")
    a, b = concatenated_forward(model, right, lean=lean), concatenated_forward(model, left, lean=lean)
    for k in a: _close(a[k], b[k])
    ga = torch.autograd.grad(a["chosen_logps"].sum() - a["rejected_logps"].sum(), list(model.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b["chosen_logps"].sum() - b["rejected_logps"].sum(), list(model.parameters()), allow_unused=True)
    for x, y in zip(ga, gb):
        if x is not None: _close(x, y, tol=1e-4)
    if arch == "gpt2":                                     # without position ids, left padding would change the answer
        with torch.no_grad():
            out = model(input_ids=left["input_ids"], attention_mask=left["attention_mask"]).logits
        assert (get_batch_logps(out, left["labels"]) - torch.cat([a["chosen_logps"], a["rejected_logps"]])).abs().max() > 0.1


def test_selective_logps_matches_trl():
    from trl.trainer.utils import selective_log_softmax
    torch.manual_seed(0)
    z = torch.randn(4, 9, 300) * 4; idx = torch.randint(0, 300, (4, 9))
    for T in (1.0, 0.5):
        _close(selective_logps(z, idx, chunk_size=7, temperature=T), selective_log_softmax(z, idx, temperature=T))
    _close(selective_logps(z, idx), -F.cross_entropy(z.transpose(1, 2), idx, reduction="none"))


def test_bad_batches():
    model = _llama(0, offset=False)
    g = torch.Generator().manual_seed(0)
    R = lambda n: torch.randint(3, V, (n,), generator=g).tolist()
    b = _pref_batch([(R(2), R(3), R(2)), (R(3), R(1), R(2))], "right")
    cases = {
        "missing ['labels']": {k: v for k, v in b.items() if k != "labels"},
        "batch['labels'] has shape": {**b, "labels": b["labels"][:, 1:]},
        "expected an even number": {k: v[:3] for k, v in b.items()},
        "['chosen_1'] have no completion token": {**b, "labels": b["labels"].index_fill(0, torch.tensor([1]), -100)},
    }
    for msg, bad in cases.items():
        with pytest.raises(ValueError, match=__import__("re").escape(msg)): concatenated_forward(model, bad)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ld_alpha_and_wpo_lean_equals_full_logits(arch):
    "LD-DPO sums, plain `sft_chosen_logps` and WPO weights: lean head = full-logits path = naive, left or right padded."
    from transformers import GPT2Config, GPT2LMHeadModel
    from dpo_notes.logps import ld_token_weights, shift_labels, wpo_weights
    torch.manual_seed(0)
    model = _llama(0) if arch == "llama" else GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=H, n_layer=2, n_head=4,
                                                                        n_positions=64, initializer_range=0.2)).eval()
    g = torch.Generator().manual_seed(5)
    R = lambda n: torch.randint(3, V, (n,), generator=g).tolist()
    pairs = [(R(3), R(4), R(2)), (R(6), R(1), R(5)), (R(2), R(7), R(3))]
    right, left = _pref_batch(pairs, "right"), _pref_batch(pairs, "left")
    with torch.no_grad():
        outs = [concatenated_forward(model, b, ld_alpha=0.25, use_weighting=True, lean=lean, chunk_size=5)
                for b in (right, left) for lean in (True, False)]
        logits = model(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits[:, :-1]
    targets, mask = shift_labels(right["labels"])
    ls = logits.log_softmax(-1)
    tok = ls.gather(-1, targets[..., None])[..., 0] * mask
    want = dict(ld=(tok * ld_token_weights(mask, 0.25)).sum(-1), sft=tok.sum(-1)[:3],
                w=wpo_weights(tok, torch.logsumexp(2 * ls, -1), mask))
    assert (want["ld"] - tok.sum(-1)).abs().max() > 0.1          # the pairs differ in length: LD changes the sums
    for o in outs:
        _close(torch.cat([o["chosen_logps"], o["rejected_logps"]]), want["ld"])
        _close(o["sft_chosen_logps"], want["sft"]); _close(o["wpo_weights"], want["w"])
