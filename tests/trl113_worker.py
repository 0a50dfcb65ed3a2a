"""Run TRL 1.13.0's `XPOTrainer` code on inputs prepared by tests/test_xpo_trl113.py; write what it computes.

Runs in a subprocess whose PYTHONPATH starts with a folder holding TRL 1.13.0 (the project's venv has TRL 1.16, which
no longer has XPO); torch/transformers/datasets/accelerate/peft are the venv's. It imports nothing from dpo_notes, so
everything it returns is TRL's. Usage: `python trl113_worker.py IN.pt OUT.pt`.

IN.pt (torch.save of a dict):
  "losses": a list of cases, each {"pm", "pr", "rr", "rm": (B, C) per-token log-probs (policy/ref on the model's and on
            the reference's completions, 0 on padding), "chosen_mask": (B,) bool, "beta", "alpha", "loss_type"};
  "step":   {"dir": folder with policy/, ref/, reward/, tokenizer/ (save_pretrained), "prompts": list[str],
            "model_output", "ref_output": (B, P + C) prompt + completion ids as `generate` returns them,
            "configs": list of XPOConfig keyword dicts}.
OUT.pt: {"trl_version", "trl_file", "losses": per case {"loss", "dpo", "xpo", "grad_pm", "grad_pr"},
         "step": per config {"loss", "grads": {name: grad}, "stats": {key: value}}, "callable_reward_error": str}.
"""
import os, sys, tempfile, types, warnings

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore")
import torch

torch.set_num_threads(int(os.environ.get("DPO_NOTES_THREADS", "1")))


def trl_losses(case):
    "TRL 1.13's own `XPOTrainer._compute_losses`, called with a stand-in `self` that carries beta, alpha and loss_type."
    from trl.experimental.xpo import XPOTrainer
    me = types.SimpleNamespace(beta=case["beta"], alpha=case["alpha"], args=types.SimpleNamespace(loss_type=case["loss_type"]))
    pm, pr = case["pm"].clone().requires_grad_(True), case["pr"].clone().requires_grad_(True)
    loss, dpo, xpo = XPOTrainer._compute_losses(me, pm, pr, case["rr"], case["rm"], case["chosen_mask"])
    g_pm, g_pr = torch.autograd.grad(loss, [pm, pr])
    return {"loss": loss.detach(), "dpo": dpo.detach(), "xpo": xpo.detach(), "grad_pm": g_pm, "grad_pr": g_pr}


def make_trainer(d, prompts, cfg, reward=None):
    "A real `XPOTrainer` on the saved tiny policy/reference/reward model, on CPU, logging nowhere."
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.xpo import XPOConfig, XPOTrainer
    tok = AutoTokenizer.from_pretrained(os.path.join(d, "tokenizer"))
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(d, "policy"), dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(os.path.join(d, "ref"), dtype=torch.float32)
    if reward is None: reward = AutoModelForSequenceClassification.from_pretrained(os.path.join(d, "reward"), dtype=torch.float32)
    args = XPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], bf16=False, fp16=False, use_cpu=True,
                     gradient_checkpointing=False, per_device_train_batch_size=len(prompts), **cfg)
    return XPOTrainer(model=policy, ref_model=ref, reward_funcs=reward, args=args, processing_class=tok,
                      reward_processing_classes=tok, train_dataset=Dataset.from_dict({"prompt": list(prompts)}))


def trl_step(step, cfg):
    "One `XPOTrainer.training_step` with `_generate_completions` returning the fixed samples: loss, gradients, stats."
    tr = make_trainer(step["dir"], step["prompts"], cfg)
    tr._generate_completions = lambda prompts, model: (step["model_output"].clone(), step["ref_output"].clone())
    tr.model.zero_grad(set_to_none=True)
    loss = tr.training_step(tr.model, {"prompt": list(step["prompts"])})
    grads = {n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None}
    stats = {k: v[-1] for k, v in tr.stats.items() if v}
    return {"loss": float(loss), "grads": grads, "stats": stats}


def callable_reward_error(step):
    "What TRL 1.13's XPO does with a plain reward callable (OnlineDPOTrainer accepts one; XPO's `get_reward` needs a model)."
    tr = make_trainer(step["dir"], step["prompts"], step["configs"][0], reward=lambda prompts, completions, **kw: [0.0] * len(completions))
    tr._generate_completions = lambda prompts, model: (step["model_output"].clone(), step["ref_output"].clone())
    try: tr.training_step(tr.model, {"prompt": list(step["prompts"])})
    except Exception as e: return f"{type(e).__name__}: {e}"
    return ""


def main(inp, out):
    import trl
    data = torch.load(inp, weights_only=False)
    res = {"trl_version": trl.__version__, "trl_file": trl.__file__}
    res["losses"] = [trl_losses(c) for c in data.get("losses", [])]
    if "step" in data:
        res["step"] = [trl_step(data["step"], cfg) for cfg in data["step"]["configs"]]
        res["callable_reward_error"] = callable_reward_error(data["step"])
    torch.save(res, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
