"""XPO (`dpo_notes.xpo`) against TRL 1.13.0's `XPOTrainer`, the last TRL release that has XPO (trl#7256 removed it in 1.14).

TRL 1.13 cannot sit beside the venv's TRL 1.16, so the test installs it once, without dependencies, into
`<repo>/.cache/trl-1.13.0` (git-ignored) and runs tests/trl113_worker.py in a subprocess with that folder first on
PYTHONPATH; torch/transformers/datasets/accelerate/peft are the venv's (TRL 1.13.0 imports and trains against
transformers 5). It skips only when that install fails (no network). What is compared, on a tiny random Llama:
(a) the loss, its two parts and its gradient w.r.t. the log-probs, on the same per-token log-probs, through TRL's own
    `XPOTrainer._compute_losses` (sigmoid and IPO, two alphas, two betas);
(b) one full step: same weights, same prompts, same completions (TRL's `_generate_completions` returns ours), the same
    reward model (TRL: `get_reward` on token ids; ours: a reward callable on the decoded text) -> same loss, same gradient
    on every parameter, same metrics where the two define them alike (and, where TRL defines them otherwise,
    TRL's value recomputed from its own definition).
The XPO code path of 1.13 is 1.0's (tests/test_xpo.py) less the judges: 1.1 removed `judge=`, so XPO 1.13 scores
with one reward *model* only; a reward callable, which TRL's online DPO accepts, crashes in XPO's `get_reward`.
"""
import copy, os, shutil, subprocess, sys, tempfile, warnings
from pathlib import Path
import pytest
import torch
from dpo_notes.core import set_threads
from dpo_notes.online import completion_logps, sample_completions, pad_prompts
from dpo_notes.runtime import LAUNCHER_VARS
from dpo_notes.xpo import XPOConfig, pad_right, xpo_loss, xpo_step

pytestmark = pytest.mark.parity     # every test here compares two implementations (tests/parity.py)

set_threads()
warnings.filterwarnings("ignore")
from conftest import perturbed, tiny     # noqa: E402  (the tiny model and tokenizer, shared)

TRL_VERSION = "1.13.0"
ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".cache" / f"trl-{TRL_VERSION}"
WORKER = Path(__file__).with_name("trl113_worker.py")
PROMPTS = ["ann reviews the lamp :", "bob reviews the bike :", "cat reviews the chair :", "dan reviews the phone :"]
PAD, EOS, UNK = 0, 1, 2


def install_trl():
    "TRL 1.13.0 in TARGET (installed once: a temporary folder renamed into place, so two runs cannot half-install it)."
    if (TARGET / "trl" / "__init__.py").exists(): return TARGET
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=TARGET.parent, prefix=f".trl-{TRL_VERSION}-")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp, f"trl=={TRL_VERSION}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"could not install trl=={TRL_VERSION} into {TARGET} (no network?): {(r.stderr or r.stdout)[-400:]}")
    try: os.replace(tmp, TARGET)
    except OSError: shutil.rmtree(tmp, ignore_errors=True)          # another run installed it first
    return TARGET


def run_worker(inputs: dict, tmp: Path) -> dict:
    "Run tests/trl113_worker.py under TRL 1.13 on `inputs`; its outputs."
    inp, out = tmp / "in.pt", tmp / "out.pt"
    torch.save(inputs, inp)
    # without a launcher's variables: an earlier test that left RANK/WORLD_SIZE/MASTER_PORT behind (vLLM's single-process
    # set-up does) made TrainingArguments._setup_devices try to join a process group and fail
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env = dict(env, PYTHONPATH=os.pathsep.join([str(TARGET), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, str(WORKER), str(inp), str(out)], env=env, capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, f"TRL {TRL_VERSION} worker failed:\n{r.stderr[-3000:]}"
    return torch.load(out, weights_only=False)


def reward_model(seed=5):          # seed 5: on these samples the policy wins two pairs and loses two
    "A tiny random Llama sequence classifier on the same vocabulary: TRL 1.13's XPO needs a reward *model*."
    from transformers import LlamaConfig, LlamaForSequenceClassification
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=22, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, num_labels=1, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)).eval()


def reward_judge(rm, tok):
    """Our side of the same reward: a callable on (prompt, completion text, finished). It re-tokenizes the text and puts
    the eos back where the completion ended, so it reads the tokens TRL's `get_reward` reads (the score at the last one)."""
    def judge(prompt, completion, finished=False):
        ids = tok(prompt + (" " + completion if completion else ""), add_special_tokens=False).input_ids + ([EOS] if finished else [])
        with torch.no_grad(): return float(rm(torch.tensor([ids])).logits[0, 0])
    return judge


def fixed_completions(model, p_ids, p_mask, seed, max_new_tokens=6):
    "Sampled completions, with sampled <pad>/<unk> swapped for a word (TRL reads pad ids as padding, decoding drops <unk>)."
    torch.manual_seed(seed)
    ids, mask, eos = sample_completions(model, p_ids, p_mask, num_samples=1, max_new_tokens=max_new_tokens, eos_ids=[EOS],
                                        pad_token_id=PAD, temperature=1.0)
    bad = (mask.bool()) & ((ids == PAD) | (ids == UNK))
    return ids.masked_fill(bad, 3), mask, eos


STEP_CONFIGS = [dict(loss_type="sigmoid", beta=0.1, alpha=1e-5),
                dict(loss_type="ipo", beta=0.5, alpha=0.1),
                dict(loss_type="sigmoid", beta=0.2, alpha=0.1, missing_eos_penalty=1.0)]
LOSS_CASES = [dict(loss_type=lt, alpha=a, beta=b) for lt in ("sigmoid", "ipo") for a in (1e-5, 0.1) for b in (0.1, 0.5)]
CHOSEN = torch.tensor([True, False, True, False])


@pytest.fixture(scope="module")
def trl113(tmp_path_factory):
    "Everything both sides need, and TRL 1.13's results on it (one worker run for the whole module)."
    install_trl()
    from transformers.utils import logging as hf_logging
    tmp = tmp_path_factory.mktemp("xpo_trl113")
    m, tok = tiny(); policy, rm = perturbed(m), reward_model()
    hf_logging.disable_progress_bar()                          # no "Writing model shards" bars in the test log
    try:
        for name, obj in [("policy", policy), ("ref", m), ("reward", rm), ("tokenizer", tok)]: obj.save_pretrained(tmp / name)
    finally: hf_logging.enable_progress_bar()
    p_ids, p_mask = pad_prompts(tok, PROMPTS)
    m_ids, m_mask, m_eos = fixed_completions(policy, p_ids, p_mask, seed=1)
    r_ids, r_mask, r_eos = fixed_completions(m, p_ids, p_mask, seed=2)
    W = max(m_ids.shape[1], r_ids.shape[1])                    # (a) wants one width; the step takes each as sampled
    a = [pad_right(t, W, v) for t, v in ((m_ids, PAD), (m_mask, 0), (r_ids, PAD), (r_mask, 0))]
    with torch.no_grad():
        lp = {k: completion_logps(mod, p_ids, p_mask, ids, mask) for k, mod, ids, mask in
              [("pm", policy, a[0], a[1]), ("pr", policy, a[2], a[3]), ("rm", m, a[0], a[1]), ("rr", m, a[2], a[3])]}
    cases = [dict(lp, chosen_mask=CHOSEN, **c) for c in LOSS_CASES]
    step = dict(dir=str(tmp), prompts=PROMPTS, configs=[dict(c, max_new_tokens=6) for c in STEP_CONFIGS],
                model_output=torch.cat([p_ids, m_ids], 1), ref_output=torch.cat([p_ids, r_ids], 1))
    out = run_worker({"losses": cases, "step": step}, tmp)
    return dict(out=out, cases=cases, policy=policy, ref=m, rm=rm, tok=tok, samples=(m_ids, m_mask, m_eos, r_ids, r_mask, r_eos),
                p=(p_ids, p_mask))


def test_worker_runs_trl_1_13(trl113):
    "The worker really imported TRL 1.13.0 from the cache folder, not the venv's 1.16."
    out = trl113["out"]
    assert out["trl_version"] == TRL_VERSION and Path(out["trl_file"]).resolve().is_relative_to(TARGET.resolve())
    m_ids, m_mask, m_eos, r_ids, r_mask, r_eos = trl113["samples"]
    assert m_eos.any() and not m_eos.all()                          # the samples test both "ended" and "ran out of tokens"


@pytest.mark.parametrize("i", range(len(LOSS_CASES)), ids=[f"{c['loss_type']}-a{c['alpha']}-b{c['beta']}" for c in LOSS_CASES])
def test_xpo_loss_equals_trl_1_13(trl113, i):
    "(a) Same per-token log-probs in: same loss, DPO part, XPO part, and gradient w.r.t. the policy's log-probs."
    c, trl = trl113["cases"][i], trl113["out"]["losses"][i]
    pm, pr = c["pm"].clone().requires_grad_(True), c["pr"].clone().requires_grad_(True)
    losses, dpo, xpo, _, _ = xpo_loss(pm.sum(1), pr.sum(1), c["rm"].sum(1), c["rr"].sum(1), c["chosen_mask"], c["beta"], c["alpha"],
                                      c["loss_type"])
    g_pm, g_pr = torch.autograd.grad(losses.mean(), [pm, pr])
    torch.testing.assert_close(losses.mean().detach(), trl["loss"]); torch.testing.assert_close(dpo.detach(), trl["dpo"])
    torch.testing.assert_close(xpo.detach(), trl["xpo"])
    torch.testing.assert_close(g_pm, trl["grad_pm"]); torch.testing.assert_close(g_pr, trl["grad_pr"])
    assert trl["grad_pr"].abs().sum() > 0 and not torch.equal(trl["dpo"], torch.zeros_like(trl["dpo"]))
    print(f"\nloss {LOSS_CASES[i]}: {float(trl['loss']):.6g}, max |diff| loss {float((losses.mean().detach() - trl['loss']).abs()):.2g}, "
          f"grads {max(float((g_pm - trl['grad_pm']).abs().max()), float((g_pr - trl['grad_pr']).abs().max())):.2g}")


def our_step(d, cfg_kw, padding_free):
    "Our xpo_step on the same weights and completions (the sampler patched to return them) and the same reward model."
    policy, ref, tok = copy.deepcopy(d["policy"]), d["ref"], d["tok"]
    m_ids, m_mask, m_eos, r_ids, r_mask, r_eos = d["samples"]
    fixed = lambda model, *a, **k: (m_ids, m_mask, m_eos) if model is policy else (r_ids, r_mask, r_eos)
    cfg = XPOConfig(max_new_tokens=6, temperature=1.0, padding_free=padding_free, **cfg_kw)
    import dpo_notes.online as O
    orig = O.sample_completions                     # replaced wherever dpo_notes holds it: the sampler may move modules
    mods = [m for n, m in list(sys.modules.items()) if n.startswith("dpo_notes") and getattr(m, "sample_completions", None) is orig]
    for m in mods: m.sample_completions = fixed
    try: loss, met, samples = xpo_step(policy, ref, tok, PROMPTS, reward_judge(d["rm"], tok), cfg)
    finally:
        for m in mods: m.sample_completions = orig
    loss.backward()
    return loss, met, samples, {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}


SAME = ["loss/dpo", "loss/xpo", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
        "objective/model_scores", "objective/ref_scores", "objective/scores_margin", "val/model_contain_eos_token",
        "val/ref_contain_eos_token", "alpha", "beta"]


@pytest.mark.parametrize("padding_free", [True, False], ids=["padding_free", "padded"])
@pytest.mark.parametrize("j", range(len(STEP_CONFIGS)), ids=["-".join(f"{k}{v}" for k, v in c.items()) for c in STEP_CONFIGS])
def test_xpo_step_equals_trl_1_13(trl113, j, padding_free):
    "(b) One full step on the same completions and reward: same loss, same gradient on every parameter, same metrics."
    trl = trl113["out"]["step"][j]
    loss, met, samples, grads = our_step(trl113, STEP_CONFIGS[j], padding_free)
    assert 0 < sum(samples["a_wins"]) < len(PROMPTS)           # both kinds of pair: policy sample chosen, and rejected
    assert all(samples["keep"])
    loss = float(loss.detach())
    assert abs(loss - trl["loss"]) <= 1e-5 * max(1.0, abs(trl["loss"])), (loss, trl["loss"])
    assert set(grads) == set(trl["grads"])
    gmax = max(float(g.abs().max()) for g in trl["grads"].values())
    gdiff = max(float((grads[n] - trl["grads"][n]).abs().max()) for n in grads)
    assert gmax > 1e-3 and gdiff <= 1e-5 * max(1.0, gmax), (gdiff, gmax)     # fp32 rounding, relative to the largest entry
    for k in SAME: assert abs(met[k] - trl["stats"][k]) < 1e-5, (k, met[k], trl["stats"][k])
    print(f"\nstep {STEP_CONFIGS[j]} {'padding_free' if padding_free else 'padded'}: loss {loss:.6g} (TRL {trl['loss']:.6g}), "
          f"max |grad diff| {gdiff:.2g} of max |grad| {gmax:.3g}, max |metric diff| {max(abs(met[k] - trl['stats'][k]) for k in SAME):.2g}")


def test_metrics_trl_1_13_defines_otherwise(trl113):
    """`objective/kl`, `objective/entropy` and `logps/*` differ by definition: TRL 1.13 (as 1.0) averages KL and entropy over
    the policy's AND the reference's samples (the latter are not samples of pi), and logs `logps/chosen` as the mean
    policy log-prob PLUS the mean reference log-prob of the chosen completions. Ours: the policy's own samples; the
    policy's log-prob only. Checked by recomputing TRL's numbers from its definitions on our log-probs."""
    trl = trl113["out"]["step"][0]["stats"]
    c = trl113["cases"][0]
    pm, pr, rm, rr = (c[k].sum(1) for k in ("pm", "pr", "rm", "rr"))
    _, met, samples, _ = our_step(trl113, STEP_CONFIGS[0], True)
    w = torch.tensor(samples["a_wins"])
    trl_kl = ((pm - rm) + (pr - rr)).mean() / 2
    trl_entropy = (-pm.mean() - pr.mean()) / 2
    trl_logps_chosen = torch.where(w, pm, pr).mean() + torch.where(w, rm, rr).mean()
    trl_logps_rejected = torch.where(w, pr, pm).mean() + torch.where(w, rr, rm).mean()
    for k, v in [("objective/kl", trl_kl), ("objective/entropy", trl_entropy), ("logps/chosen", trl_logps_chosen),
                 ("logps/rejected", trl_logps_rejected)]:
        assert abs(float(v) - trl[k]) < 1e-4, (k, float(v), trl[k])
    assert abs(met["objective/kl"] - float((pm - rm).mean())) < 1e-4 and abs(met["objective/entropy"] - float(-pm.mean())) < 1e-4
    assert abs(met["logps/chosen"] - float(torch.where(w, pm, pr).mean())) < 1e-4
    assert abs(met["objective/kl"] - trl["objective/kl"]) > 1e-3          # the definitions really differ on this batch


def test_trl_1_13_xpo_needs_a_reward_model(trl113):
    "TRL 1.13's online DPO takes reward callables, but XPO's `_compute_rewards` calls `get_reward(model, ...)`: it crashes."
    err = trl113["out"]["callable_reward_error"]
    assert "base_model_prefix" in err, err

