"""Other libraries' code transcribed or stood in for, in one place: notebooks and tests import it from here.

- `trl_1_0_compute_losses`: TRL 1.0's `XPOTrainer._compute_losses`, line for line (TRL 1.0 and 1.13, the last release
  with XPO, cannot be installed beside TRL 1.16). Source: trl v1.0.0 `trl/experimental/xpo/xpo_trainer.py`.
  Used by notebook 11 ("Parity with TRL 1.0") and `tests/test_xpo.py`.
- `fake_vllm`: a stand-in `vllm` module with the surface `dpo_notes.gpu.VLLMSampler` uses (vLLM needs CUDA).
  Used by notebook 14 ("Testing it without a GPU") and `tests/test_gpu.py`."""
from __future__ import annotations
import types
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def trl_1_0_compute_losses(model_logprobs_model_data, model_logprobs_ref_data, ref_logprobs_ref_data,
                           ref_logprobs_model_data, chosen_mask, beta, alpha, loss_type):
    "TRL 1.0 `XPOTrainer._compute_losses`, transcribed line for line (self.beta/self.alpha/self.args.loss_type made arguments)."
    model_logprobs_model_data_sum = model_logprobs_model_data.sum(1)
    model_logprobs_ref_data_sum = model_logprobs_ref_data.sum(1)
    ref_logprobs_ref_data_sum = ref_logprobs_ref_data.sum(1)
    ref_logprobs_model_data_sum = ref_logprobs_model_data.sum(1)
    chosen_model_logprobs = torch.where(chosen_mask, model_logprobs_model_data_sum, model_logprobs_ref_data_sum)
    chosen_ref_logprobs = torch.where(chosen_mask, ref_logprobs_model_data_sum, ref_logprobs_ref_data_sum)
    chosen_log_ratios = chosen_model_logprobs - chosen_ref_logprobs
    rejected_model_logprobs = torch.where(~chosen_mask, model_logprobs_model_data_sum, model_logprobs_ref_data_sum)
    rejected_ref_logprobs = torch.where(~chosen_mask, ref_logprobs_model_data_sum, ref_logprobs_ref_data_sum)
    rejected_log_ratios = rejected_model_logprobs - rejected_ref_logprobs
    logits = chosen_log_ratios - rejected_log_ratios
    if loss_type == "sigmoid": dpo_losses = -F.logsigmoid(beta * logits)
    elif loss_type == "ipo": dpo_losses = (logits - 1 / (2 * beta)) ** 2
    else: raise NotImplementedError(f"invalid loss type {loss_type}")
    xpo_losses = alpha * model_logprobs_ref_data_sum
    loss = (dpo_losses + xpo_losses).mean()
    return loss, dpo_losses, xpo_losses


def fake_raw(prompt: list[int], seed: int, n: int, vocab: int = 12) -> list[int]:
    "The fake's completion before stopping: n ids determined by the prompt and the seed."
    return [(7 * sum(prompt) + 3 * seed + 5 * t) % vocab for t in range(n)]


def fake_vllm(script: list[list[int]] | None = None):
    "A stand-in `vllm` module: records what it is given, 'generates' `fake_raw` ids (or `script[k]` for request k)."
    mod = types.ModuleType("vllm")
    class SamplingParams:
        def __init__(self, **kw): self.kw = kw; self.__dict__.update(kw)
    class EngineModel:
        def __init__(self): self.loaded = []
        def load_weights(self, weights): self.loaded += [(n, t.detach().clone()) for n, t in weights]
    class LLM:
        def __init__(self, **kw):
            self.kw, self.requests, self.params, self.resets, self.events = kw, [], [], 0, []
            self.engine_model = EngineModel()
            self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
                model_runner=SimpleNamespace(model=self.engine_model))))
            mod.instances.append(self)
        def reset_prefix_cache(self): self.resets += 1; self.events.append("reset")
        def sleep(self, level): self.events.append(f"sleep{level}")
        def wake_up(self, tags=None): self.events.append("wake:" + ",".join(tags))
        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            self.requests += prompts; self.params += sampling_params; self.events.append("generate")
            outs = []
            for k, (p, sp) in enumerate(zip(prompts, sampling_params)):
                raw = script[k] if script is not None else fake_raw(p["prompt_token_ids"], sp.seed, sp.max_tokens)
                ids, reason = [], "length"
                for t in raw[:sp.max_tokens]:
                    ids.append(t)
                    if t in sp.stop_token_ids and len(ids) > sp.min_tokens: reason = "stop"; break
                outs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[SimpleNamespace(
                    index=0, token_ids=ids, finish_reason=reason, stop_reason=ids[-1] if reason == "stop" else None)]))
            return outs
    mod.LLM, mod.SamplingParams, mod.instances = LLM, SamplingParams, []
    return mod
