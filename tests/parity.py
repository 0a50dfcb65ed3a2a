"""How two implementations of the same training are compared (ours vs TRL, a fast path vs the plain one, several
processes vs one), and why each bound is what float arithmetic can explain.

Before any optimizer step both sides hold the same weights, so a metric differs only by summation order (a few float32
ulps): step 1 is compared tightly (`TIGHT`, relative to the value's size).

After a step, AdamW's update is lr·m̂/(√v̂ + ε). For a weight whose true gradient is 0 (an unused embedding row, a
bias the loss cannot see), the computed gradient is float rounding, ~1e-9 — comparable to ε = 1e-8 — so that weight
moves by a noise-dependent fraction of a full step (measured: 2.8e-4 after one step at lr 3e-3 on the toy model).
The noise differs between CPU kernels (AVX2, AVX-512, the scalar `default` dispatch) and between summation orders,
so after the first step the two runs are not equal to a fixed number of ulps: they are equal up to a small fraction
of how far the training moved them. Later steps are therefore compared relative to movement:

- weights: ||θ_a − θ_b|| ≤ `WEIGHT_REL` · ||θ_b − θ_0||;
- a logged metric m at steps ≥ 2: |m_a − m_b| ≤ TIGHT·max(1, |m_b|) + `METRIC_REL` · max_t |m_b(t) − m_b(1)|
  (how far the metric moved over the run; a margin starts at 0, so its bound grows with the margins reached).

Measured worst ratios (toy "s" model against TRL 1.16, fp32, one thread), under this CPU's AVX2 dispatch and under
`ATEN_CPU_CAPABILITY=default`: metrics 2.0e-3 of their movement (TR-DPO's loss: full learning rate from step 1, the
worst case; 2.2e-6 with a warmup), weights 2.4e-4 of theirs. The bounds leave a factor of 10 (metrics) and 8
(weights) for other kernels. A real difference in the maths fails them: ours with TR-DPO's mixing weight 0.5 against
TRL's 0.6 exceeds the bound at step 3, β 0.11 against 0.1 at step 2 (and the tight step-1 check fails a wrong loss at
once).
"""
import torch

TIGHT = 1e-5        # step 1: same weights, only the summation order differs
METRIC_REL = 2e-2   # later steps: a share of how far the metric moved (worst measured 2.0e-3)
WEIGHT_REL = 2e-3   # weights after steps: a share of how far they moved (worst measured 2.4e-4)


def flat(params) -> torch.Tensor:
    "All tensors of `params` (an iterable of tensors, or a state dict) as one float64 vector."
    if isinstance(params, dict): params = [params[k] for k in sorted(params)]
    return torch.cat([p.detach().double().flatten() for p in params])


def assert_weights_moved_alike(a, b, start, rel: float = WEIGHT_REL, what: str = "weights"):
    """`a` and `b` (parameter iterables or state dicts) after the same training from `start`: their distance is at
    most `rel` of how far `b` moved, and `b` did move. Returns the ratio (for printing)."""
    fa, fb, f0 = flat(a), flat(b), flat(start)
    moved = float((fb - f0).norm())
    assert moved > 0, f"{what}: training did not move the weights"
    ratio = float((fa - fb).norm()) / moved
    assert ratio <= rel, f"{what}: ||a - b|| = {ratio:.2e} of the distance moved (bound {rel:.0e})"
    return ratio


def assert_logs_match(ours: list[dict], theirs: list[dict], keys, tight: float = TIGHT, rel: float = METRIC_REL):
    """Two logs of the same run, step by step: step 1 within `tight` (relative to the value), every later step within
    `tight` plus `rel` of how far that metric moved over `theirs`. Returns the worst ratio per key."""
    assert len(ours) == len(theirs) and ours, (len(ours), len(theirs))
    worst = {}
    for k in keys:
        first = theirs[0][k]
        spread = max(abs(h[k] - first) for h in theirs)
        a0 = ours[0][k]
        assert abs(a0 - first) <= tight * max(1.0, abs(first)), f"{k} at step 1: {a0} vs {first}"
        worst[k] = 0.0
        for i, (x, y) in enumerate(zip(ours, theirs)):
            d = abs(x[k] - y[k])
            bound = tight * max(1.0, abs(y[k])) + rel * spread
            assert d <= bound, f"{k} at row {i}: {x[k]} vs {y[k]} (|diff| {d:.2e} > {bound:.2e}, moved {spread:.2e})"
            if spread > 0: worst[k] = max(worst[k], d / spread)
    return worst


def _no_checkpointing() -> dict:
    "TRL's configs turn activation checkpointing on by default; transformers 5 renamed the flag (the old one warns until v6)."
    from transformers import TrainingArguments
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__: return {"activation_checkpointing": False}
    return {"gradient_checkpointing": False}


NO_CHECKPOINTING = _no_checkpointing()
