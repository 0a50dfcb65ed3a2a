"""What several test modules share: tiny models and tokenizers built from configs, their prompts, and the launcher of
the multi-process tests. Test modules import these (`from conftest import tiny, PROMPTS`); none imports another
test module. Reference transcriptions of other libraries' code are in `references.py`, float bounds in `parity.py`."""
from __future__ import annotations
import copy, functools, json, os, socket, subprocess, sys, warnings
from pathlib import Path

import pytest
import torch
from dpo_notes.runtime import LAUNCHER_VARS, cut_at_eos

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


# ------------------------------------------------------- online DPO / XPO: a tiny causal LM with a word tokenizer
WORDS = "ann bob cat dan the lamp bike chair phone reviews : great good awful bad it is a .".split()


def tiny(seed=0, arch="llama"):
    "A random tiny causal LM and a WordLevel tokenizer (pad 0 != eos 1), built from configs: no files, no hub."
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, LlamaConfig, LlamaForCausalLM, GPT2Config, GPT2LMHeadModel, GenerationConfig
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>")); t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(seed)
    if arch == "llama":
        m = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None))
    else:   # learned absolute positions: position ids matter
        m = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       pad_token_id=0, eos_token_id=1, bos_token_id=1))
    m.generation_config = GenerationConfig(eos_token_id=1, pad_token_id=0)
    return m.eval(), tok


def perturbed(m, scale=0.05, seed=1):
    "A copy of `m` with noise on every weight: a policy that differs from its reference."
    p = copy.deepcopy(m); g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in p.parameters(): w.add_(scale * torch.randn(w.shape, generator=g))
    return p


PROMPTS = ["ann reviews the lamp :", "bob reviews the bike :", "cat reviews the chair :"]   # same length: no left pad

SIX = ["ann reviews the lamp :", "bob reviews the bike :", "cat reviews the chair :", "dan reviews the phone :",
       "ann reviews the bike :", "bob reviews the chair :"]


def fake_sample_completions(model, prompt_ids, prompt_mask, *, num_samples=2, max_new_tokens=4, eos_ids=(1,), pad_token_id=0, **_):
    "Deterministic completions (no RNG): a function of each prompt's real tokens and the sample index, never an eos."
    rows = []
    for s in range(num_samples):
        for r in range(prompt_ids.shape[0]):
            h = int(prompt_ids[r][prompt_mask[r].bool()].sum()) * 7 + s * 13
            rows.append([3 + (h + 5 * t) % 17 for t in range(max_new_tokens)])
    return cut_at_eos(torch.tensor(rows, device=prompt_ids.device), list(eos_ids), pad_token_id)


def dropping(drop: set):
    "A reward that cannot score the completions of the prompts in `drop` (None: the pair fails, it is never a win)."
    return lambda p, c: None if p in drop else float(len(c))


def arriving_adapter(m):
    "A peft model with a trained (non-zero) LoRA adapter, as after SFT with LoRA."
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(copy.deepcopy(m), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return pm


def tiny_classifier(n_vocab, seed=0):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(LlamaConfig(vocab_size=n_vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                      num_attention_heads=2, num_labels=1, pad_token_id=0)).eval()



# ----------------------------------------- offline losses: a one-layer Llama, its word tokenizer and six pairs
PAIR_WORDS = "<pad> <eos> a b c d e f g h".split()

PAIRS = Dataset.from_dict({
    "prompt":   ["a b", "c", "d e f", "g", "h h", "b"],
    "chosen":   [" c d", " e", " g", " a b c d", " a", " c c c"],
    "rejected": [" e", " f g h", " a b", " h", " b c d e f", " d"],
})



def word_tokenizer():
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(PAIR_WORDS)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")



def tiny_llama(seed, dtype=torch.float32):
    torch.manual_seed(seed)   # large init range: log-ratios of order 1, so every variant is away from its flat spots
    cfg = LlamaConfig(vocab_size=len(PAIR_WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                      initializer_range=0.5, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(cfg).to(dtype)



# -------------------------------------------------- multi-process tests: `accelerate launch` and its controls
ROOT = Path(__file__).resolve().parent.parent

SCRIPT = ROOT / "tests" / "mp_step.py"

DDP_CONFIG = ROOT / "examples" / "accelerate_configs" / "ddp.yaml"



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]



def launch_cmd(out: Path) -> list[str]:
    "`accelerate launch` (as a module, so no PATH lookup) with every setting explicit: no default config is consulted."
    cfg = ["--config_file", str(DDP_CONFIG)] if DDP_CONFIG.exists() else ["--multi_gpu"]
    return [sys.executable, "-m", "accelerate.commands.launch", *cfg, "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            str(SCRIPT), str(out)]



def run_launch(launch: list[str], out: Path, **env_extra) -> callable:
    """Run `launch` (a two-process `accelerate launch` whose script writes into `out`) beside the single-process
    controls (`mp_step.py out --single`); return a loader of what they wrote: `load(name)` -> info dict + "flat" weights."""
    # a launcher's variables left in this process by an earlier test (vLLM's single-process set-up sets RANK,
    # WORLD_SIZE, MASTER_PORT) would make the single-process control join a process group on the launch's port
    inherited = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith(("ACCELERATE_", "TORCHELASTIC_"))}
    env = dict(inherited, OMP_NUM_THREADS="1", DPO_NOTES_THREADS="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env_extra)
    ddp = subprocess.Popen(launch, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.run([sys.executable, str(SCRIPT), str(out), "--single"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    try: log, _ = ddp.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        ddp.kill(); log, _ = ddp.communicate()
        pytest.fail("accelerate launch did not finish in 300 s:\n" + log[-3000:])
    assert ddp.returncode == 0, log[-4000:]
    assert single.returncode == 0, single.stderr[-4000:]

    def load(name):
        info = json.loads((out / f"{name}.json").read_text())
        sd = torch.load(out / f"{name}.pt")
        info["flat"] = torch.cat([sd[k].flatten() for k in sorted(sd)])
        return info
    return load



@functools.cache
def initial_flat():
    from dpo_notes.toy import load_toy
    sd = load_toy("s")[0].state_dict()
    return torch.cat([sd[k].flatten() for k in sorted(sd)])



def dist(a, b) -> float: return float((a - b).norm())

