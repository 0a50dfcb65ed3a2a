"""`dpo_notes.gpu` on CPU, without bitsandbytes or vLLM: the install messages, the QLoRA config and its errors, the
LoRA-merged weights a generation engine receives (against peft's `merge_and_unload`, policy untouched), and
`VLLMSampler` against a fake `vllm` module (block layout, eos cut as `cut_at_eos`, unpadded prompts, sampling params)."""
import copy, os, subprocess, sys, types, warnings
from unittest import mock

import pytest
import torch
from peft import LoraConfig, get_peft_model

from dpo_notes.core import set_threads
from dpo_notes.gpu import (VLLMSampler, bnb_4bit_config, check_4bit_args, load_4bit_kwargs, policy_weights, prepare_4bit,
                           require)
from dpo_notes.runtime import cut_at_eos
from dpo_notes.toy import load_toy, make_toy_model, toy_prompts

set_threads()
warnings.filterwarnings("ignore")
FAKE_BNB = types.ModuleType("bitsandbytes")
from references import fake_raw, fake_vllm     # the stand-in vllm module (shared with notebook 14)


@pytest.fixture(autouse=True)
def _isolated_environ():
    "VLLMSampler sets RANK / WORLD_SIZE / MASTER_PORT for vLLM's single-process launcher: keep them out of later tests."
    with mock.patch.dict(os.environ): yield


@pytest.fixture(scope="module")
def toy():
    return load_toy("s")


def lora_toy(seed=0, **kw):
    torch.manual_seed(seed); m, _ = load_toy("s")
    return get_peft_model(m, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **kw))


# --- optional imports -------------------------------------------------------------------------------------------------
def test_require():
    import json
    assert require("json", "--x") is json
    with mock.patch.dict(sys.modules, {"vllm": None}), pytest.raises(ImportError) as e:
        require("vllm", "--use_vllm", note=" (CUDA GPU required)")
    assert str(e.value) == "--use_vllm needs vllm: pip install vllm (CUDA GPU required)"
    with pytest.raises(ImportError, match="--q needs no_such_pkg_dpo: pip install no-such-pkg>=1"):
        require("no_such_pkg_dpo", "--q", pip_name="no-such-pkg>=1")


def test_import_is_lazy():
    code = "import sys, dpo_notes.gpu; print(sorted({'vllm', 'bitsandbytes'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- QLoRA ------------------------------------------------------------------------------------------------------------
def test_bnb_4bit_config_errors():
    with mock.patch.dict(sys.modules, {"bitsandbytes": None}), pytest.raises(ImportError) as e:
        bnb_4bit_config()
    assert str(e.value) == "--load_in_4bit (4-bit base weights, QLoRA) needs bitsandbytes: pip install bitsandbytes (CUDA GPU required)"
    with mock.patch.dict(sys.modules, {"bitsandbytes": FAKE_BNB}), mock.patch.object(torch.cuda, "is_available", lambda: False), \
         pytest.raises(RuntimeError) as e:
        bnb_4bit_config()
    assert str(e.value) == "4-bit base weights (QLoRA) need a CUDA GPU; torch.cuda.is_available() is False"


@pytest.mark.parametrize("bf16,dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_bnb_4bit_config_values(bf16, dtype):
    with mock.patch.dict(sys.modules, {"bitsandbytes": FAKE_BNB}), mock.patch.object(torch.cuda, "is_available", lambda: True), \
         mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16):
        c = bnb_4bit_config()
        assert bnb_4bit_config(torch.float32).bnb_4bit_compute_dtype == torch.float32
    assert (c.load_in_4bit, c.load_in_8bit, c.bnb_4bit_quant_type, c.bnb_4bit_use_double_quant, c.bnb_4bit_compute_dtype) == \
        (True, False, "nf4", True, dtype)


def test_load_4bit_kwargs_and_checks(toy):
    assert load_4bit_kwargs(False) == {}
    with mock.patch.dict(sys.modules, {"bitsandbytes": FAKE_BNB}), mock.patch.object(torch.cuda, "is_available", lambda: True), \
         mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: True), mock.patch.dict(os.environ, {"LOCAL_RANK": "2"}):
        kw = load_4bit_kwargs(True)
    assert sorted(kw) == ["device_map", "quantization_config"] and kw["device_map"] == {"": 2}
    assert kw["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    for a, b in ((False, False), (False, True), (True, True)): check_4bit_args(a, b)
    with pytest.raises(ValueError, match="load_in_4bit: 4-bit base weights are frozen; train a LoRA adapter on them with --use_peft"):
        check_4bit_args(True, False)
    import dpo_notes.gpu as gpu
    seen = {}
    with mock.patch.object(gpu, "prepare_model_for_kbit_training", lambda m, **k: seen.update(k) or m):
        prepare_4bit("m", True)
    assert seen == {"use_gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    m = copy.deepcopy(toy[0])
    assert prepare_4bit(m, False) is m and not any(p.requires_grad for p in m.parameters())


# --- the weights vLLM receives ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dora", [False, True])
def test_policy_weights_lora(toy, dora):
    base = toy[0]
    pm = lora_toy(use_dora=dora)
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    got = dict(policy_weights(pm))
    assert list(got) == [n for n, _ in base.named_parameters()]
    assert set(base.state_dict()) - set(got) == {"lm_head.weight"}          # tied to embed_tokens: sent once
    merged = copy.deepcopy(pm).merge_and_unload().state_dict()
    for n, t in got.items(): torch.testing.assert_close(t, merged[n], atol=1e-6, rtol=0)
    q = "model.layers.2.self_attn.v_proj.weight"
    assert (got[q] - base.state_dict()[q]).abs().max() > 1e-2
    assert all(torch.equal(v, pm.state_dict()[k]) for k, v in before.items())  # merged into copies: nothing moved
    with pm.disable_adapter(): assert torch.equal(dict(policy_weights(pm))[q], base.state_dict()[q])


def test_policy_weights_plain_and_bf16(toy):
    base = toy[0]
    assert [(n, t.data_ptr()) for n, t in policy_weights(base)] == [(n, p.data_ptr()) for n, p in base.named_parameters()]
    pm = lora_toy(); pm = pm.to(torch.bfloat16)
    w0 = {n: p.detach().clone() for n, p in pm.named_parameters()}
    ref = copy.deepcopy(pm).merge_and_unload().state_dict()
    for _ in range(5): got = dict(policy_weights(pm))
    assert all(torch.equal(p, w0[n]) for n, p in pm.named_parameters())       # in-place merge/unmerge would drift here
    for n, t in got.items(): torch.testing.assert_close(t.float(), ref[n].float(), atol=2e-2, rtol=1e-2)


# --- VLLMSampler against the fake ---------------------------------------------------------------------------------------
def test_sampler_scripted(toy):
    model, tok = toy
    P, M = torch.tensor([[0, 3, 9], [8, 7, 6]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    fake = fake_vllm(script=[[5, 4, 6, 6], [9, 2, 1, 7], [2, 2, 3, 3], [1, 5, 5, 5]])
    with mock.patch.dict(sys.modules, {"vllm": fake}):
        s = VLLMSampler(model, tok, gpu_memory_utilization=0.25, max_model_len=96, seed=3)
        assert fake.instances == []                                           # built lazily
        with pytest.raises(RuntimeError, match="call sync_weights"): s.sample(P, M, eos_ids=[1, 4], pad_token_id=0)
        s.sync_weights(model)
        ids, mask, eos = cut_at_eos(s.sample(P, M, num_samples=2, max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=0,
                                               eos_ids=[1, 4], pad_token_id=0), [1, 4], 0)
    assert ids.tolist() == [[5, 4, 0, 0], [9, 2, 1, 0], [2, 2, 3, 3], [1, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert eos.tolist() == [True, True, False, True]
    llm = fake.instances[0]
    assert [r["prompt_token_ids"] for r in llm.requests] == [[3, 9], [8, 7, 6], [3, 9], [8, 7, 6]]
    sp = llm.params[0].kw
    assert {k: sp[k] for k in ("n", "temperature", "top_p", "top_k", "max_tokens", "min_tokens", "stop_token_ids", "detokenize")} == \
        dict(n=1, temperature=0.7, top_p=0.9, top_k=-1, max_tokens=4, min_tokens=0, stop_token_ids=[1, 4], detokenize=False)
    assert len({p.seed for p in llm.params}) == 4
    assert {k: llm.kw[k] for k in ("model", "tokenizer", "gpu_memory_utilization", "max_model_len", "dtype", "seed",
                                   "distributed_executor_backend")} == \
        dict(model=str(model.name_or_path), tokenizer=str(tok.name_or_path), gpu_memory_utilization=0.25, max_model_len=96,
             dtype="auto", seed=3, distributed_executor_backend="external_launcher")


@pytest.mark.parity
def test_sampler_matches_cut_at_eos(toy):
    model, tok = toy
    enc = tok(toy_prompts("train")[:5], return_tensors="pt", padding=True, padding_side="left")
    P, M, B = enc["input_ids"], enc["attention_mask"], 5
    assert (M == 0).any()                                                     # there is left padding to strip
    fake = fake_vllm()
    kw = dict(num_samples=3, max_new_tokens=6, top_k=20, eos_ids=[1, 4], pad_token_id=tok.pad_token_id,
              generation_kwargs={"min_new_tokens": 2})
    with mock.patch.dict(sys.modules, {"vllm": fake}):
        s = VLLMSampler(model, tok); s.sync_weights(model)
        torch.manual_seed(1); out = cut_at_eos(s.sample(P, M, **kw), kw["eos_ids"], kw["pad_token_id"])
        torch.manual_seed(1); again = cut_at_eos(s.sample(P, M, **kw), kw["eos_ids"], kw["pad_token_id"])
        with pytest.raises(ValueError, match=r"only min_new_tokens is supported, got \['repetition_penalty', 'top_a'\]"):
            s.sample(P, M, eos_ids=[1], pad_token_id=0, generation_kwargs={"top_a": 1, "repetition_penalty": 1.1})
    llm = fake.instances[0]
    unpadded = [P[i][M[i].bool()].tolist() for i in range(B)]
    raw = torch.tensor([fake_raw(unpadded[k % B], llm.params[k].seed, 6) for k in range(3 * B)])
    for a, b, c in zip(out, cut_at_eos(raw, [1, 4], tok.pad_token_id), again):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert 0 < out[2].sum() < 3 * B
    assert [r["prompt_token_ids"] for r in llm.requests[:3 * B]] == unpadded * 3
    assert (llm.params[0].top_k, llm.params[0].min_tokens) == (20, 2)


def test_sampler_errors(toy):
    model, tok = toy
    with mock.patch.dict(sys.modules, {"vllm": None}), pytest.raises(ImportError) as e:
        VLLMSampler(model, tok)
    assert str(e.value) == "--use_vllm needs vllm: pip install vllm (CUDA GPU required)"
    with mock.patch.dict(sys.modules, {"vllm": fake_vllm()}), pytest.raises(ValueError, match="has no name_or_path"):
        VLLMSampler(make_toy_model("s"), tok)


@pytest.mark.parity
def test_sampler_sync_lora(toy):
    base, tok = toy
    pm = lora_toy()
    merged = copy.deepcopy(pm).merge_and_unload().state_dict()
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(): logits0 = pm(x).logits
    fake = fake_vllm()
    with mock.patch.dict(sys.modules, {"vllm": fake}):
        s = VLLMSampler(pm, tok)
        n = s.sync_weights(pm); s.sync_weights(pm)
    names = [k for k, _ in base.named_parameters()]
    llm = fake.instances[0]
    assert n == len(names) and llm.kw["model"] == str(base.name_or_path)
    assert [k for k, _ in llm.engine_model.loaded] == names * 2
    for k, t in llm.engine_model.loaded: torch.testing.assert_close(t, merged[k], atol=1e-6, rtol=0)
    assert llm.events == ["reset", "reset"]
    with torch.no_grad(): torch.testing.assert_close(pm(x).logits, logits0, atol=1e-6, rtol=0)


def test_sampler_sleep_mode(toy):
    model, tok = toy
    P, M = torch.tensor([[3, 9]]), torch.tensor([[1, 1]])
    fake = fake_vllm()
    with mock.patch.dict(sys.modules, {"vllm": fake}):
        s = VLLMSampler(model, tok, enable_sleep_mode=True)
        s.sync_weights(model); s.sample(P, M, eos_ids=[1], pad_token_id=0, max_new_tokens=3)
        with pytest.raises(RuntimeError, match="sleep mode dropped vLLM's weights"): s.sample(P, M, eos_ids=[1], pad_token_id=0)
        s.sync_weights(model); s.sample(P, M, eos_ids=[1], pad_token_id=0, max_new_tokens=3)
    assert fake.instances[0].events == ["sleep2", "wake:weights", "reset", "wake:kv_cache", "generate", "sleep2",
                                        "wake:weights", "reset", "wake:kv_cache", "generate", "sleep2"]
