"Win-rate maths and protocol (dpo_notes.evals): intervals, ties, failures, position bias, the row viewer."
import math, warnings
import numpy as np
import pandas as pd
import pytest
from dpo_notes.core import set_threads
from dpo_notes.evals import distinct_n
from dpo_notes.evals import (wilson_interval, bootstrap_interval, judge_outcomes, summarize_outcomes,
                             win_rate, win_rate_vs_dataset, RowPager, completion_viewer, rows_html)
from dpo_notes.judges import TIE, FAILED, RuleJudge

set_threads()

# statsmodels.stats.proportion.proportion_confint(k, n, method="wilson"), statsmodels 0.14, written as literals
WILSON = {(8, 10): (0.4901624715, 0.9433178485), (0, 10): (0.0, 0.2775327999), (10, 10): (0.7224672001, 1.0),
          (5, 10): (0.2365930905, 0.7634069095), (50, 100): (0.4038315304, 0.5961684696)}

def always_a(prompts, pairs): return [0] * len(pairs)
def always_b(prompts, pairs): return [1] * len(pairs)
def always_fail(prompts, pairs): return [FAILED] * len(pairs)
def always_tie(prompts, pairs): return [TIE] * len(pairs)
def longer(prompts, pairs): return [0 if len(a) > len(b) else 1 if len(b) > len(a) else TIE for a, b in pairs]

P = [f"prompt {i}" for i in range(10)]
POL = [f"a fairly long answer number {i}" for i in range(8)] + ["eq", "s"]
REF = [f"short {i}" for i in range(8)] + ["eq", "a much longer reference"]

@pytest.mark.parametrize("kn", list(WILSON))
def test_wilson_known_values(kn):
    assert wilson_interval(*kn) == pytest.approx(WILSON[kn], abs=1e-9)

def test_wilson_closed_form_and_edges():
    z = 1.959963984540054; k, n = 37, 60; p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n); h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((c - h, c + h), abs=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="k must be in"): wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must be"): wilson_interval(0, -1)

def test_bootstrap():
    assert bootstrap_interval([1.0] * 30) == (1.0, 1.0)
    x = np.r_[np.ones(240), np.zeros(160)]
    assert bootstrap_interval(x) == pytest.approx(wilson_interval(240, 400), abs=0.01)
    assert bootstrap_interval(x, seed=1) == bootstrap_interval(x, seed=1)
    ties = bootstrap_interval([0.5] * 100); split = bootstrap_interval([1.0] * 50 + [0.0] * 50)
    assert ties == (0.5, 0.5) and split[1] - split[0] > 0.15        # ties: no spread; Wilson would not see it
    with pytest.raises(ValueError, match="NaN"): bootstrap_interval([1.0, math.nan])

def test_ties_count_half():
    r = win_rate(POL, REF, P, longer)
    assert (r.wins, r.ties, r.losses, r.failures, r.n) == (8, 1, 1, 0, 10)
    assert r.rate == pytest.approx(0.85)
    r = win_rate(POL, REF, P, always_tie)
    assert (r.rate, r.ties, r.n) == (0.5, 10, 10)
    assert r.ci == pytest.approx(wilson_interval(5, 10))

def test_failures_never_win():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = win_rate(POL, REF, P, always_fail)
    assert math.isnan(r.rate) and math.isnan(r.lo) and (r.n, r.wins, r.failures) == (0, 0, 10)
    assert any("undefined" in str(x.message) for x in w) and "undefined" in str(r)
    # one failure among ten: it leaves the denominator and is not a win or a loss
    flaky = lambda prompts, pairs: [FAILED if p == "prompt 0" else v for p, v in zip(prompts, longer(prompts, pairs))]
    r = win_rate(POL, REF, P, flaky)
    assert (r.failures, r.n, r.wins, r.ties, r.losses) == (1, 9, 7, 1, 1)
    assert r.rate == pytest.approx(7.5 / 9)
    assert r.rows.result.tolist()[0] == "failure"

def test_failure_in_one_order_fails_the_prompt():
    # fails only when the policy is shown first: keeping the other order would reintroduce position bias
    half = lambda prompts, pairs: [FAILED if a in POL else 0 for a, b in pairs]
    with pytest.warns(UserWarning, match="undefined"): r = win_rate(POL, REF, P, half)
    assert (r.failures, r.n) == (10, 0)

def test_both_orders_cancel_position_bias():
    for judge in (always_a, always_b):
        r = win_rate(POL, REF, P, judge)
        assert (r.rate, r.ties, r.wins, r.losses) == (0.5, 10, 0, 0)
        assert r.lo < 0.5 < r.hi
    assert win_rate(POL, REF, P, always_a, order="policy_first").rate == 1.0
    assert win_rate(POL, REF, P, always_a, order="reference_first").rate == 0.0
    r = win_rate(POL * 20, REF * 20, P * 20, always_a, order="random")   # shuffling: 0.5 only on average, no ties
    assert r.ties == 0 and 0.35 < r.rate < 0.65

def test_bad_verdicts_and_inputs():
    with pytest.raises(ValueError, match="verdict 2"): win_rate(POL, REF, P, lambda p, q: [2] * len(q))
    with pytest.raises(ValueError, match="policy has 3 completions for 10 prompts"): win_rate(POL[:3], REF, P, longer)
    with pytest.raises(ValueError, match="model .with .generate. or a list"): win_rate(object(), REF, P, longer)
    class FakeModel:
        def generate(self, **kw): raise AssertionError("not reached")
    with pytest.raises(ValueError, match="tokenizer is required"): win_rate(FakeModel(), REF, P, longer)
    assert win_rate(pd.Series(POL), np.array(REF), P, longer).rate == pytest.approx(0.85)   # any sequence works
    with pytest.raises(ValueError, match="order must be one of"): win_rate(POL, REF, P, longer, order="shuffle")
    with pytest.raises(ValueError, match="interval must be"): win_rate(POL, REF, P, longer, interval="wald")
    with pytest.raises(ValueError, match="prompts must not be empty"): win_rate([], [], [], longer)

def test_scores_rows_and_rule_judge():
    judge = RuleJudge(lambda p, c: len(c.split()))
    r = win_rate(POL, REF, P, judge, interval="bootstrap")
    assert r.interval == "bootstrap" and r.lo <= r.rate <= r.hi
    assert r.rows.policy_score.tolist()[0] == 6.0 and r.rows.reference_score.tolist()[0] == 2.0
    assert list(r.rows.columns[:3]) == ["prompt", "policy", "reference"]
    assert r.decoding == "policy: precomputed; reference: precomputed"
    assert r.distinct_policy == pytest.approx(distinct_n(POL))

def test_vs_dataset():
    ds = [{"prompt": p, "completion": c} for p, c in zip(P, REF)]
    r = win_rate_vs_dataset(POL, ds, longer)
    assert r.rate == pytest.approx(0.85)
    with pytest.raises(ValueError, match="reference_key 'ref'"): win_rate_vs_dataset(POL, ds, longer, reference_key="ref")

def test_distinct_n():
    assert distinct_n(["great phone ."] * 10) == pytest.approx(0.1)
    assert distinct_n(["a b a b"]) == pytest.approx(2 / 3)

def test_summarize_outcomes_fractional():
    r = summarize_outcomes([1, 0.75, 0.5, 0.25, 0, math.nan])
    assert (r.wins, r.ties, r.losses, r.failures) == (2, 1, 2, 1)
    assert r.rate == pytest.approx(0.5)

def test_row_pager_and_viewer():
    r = win_rate(POL, REF, P, longer)
    pg = RowPager(r)
    assert pg.position == "1 / 10" and pg.prev().position == "1 / 10"
    pg.goto(99); assert pg.position == "10 / 10"
    pg.set_filter("tie"); assert (len(pg), pg.row.prompt) == (1, "prompt 8")
    assert "policy shown first → tie" in pg.html()
    v = completion_viewer(r, filter="loss")
    assert v.pager.row.prompt == "prompt 9" and "prompt 9" in v.children[1].value
    assert rows_html(r, n=3).count("<tr>") == 3


# ---- issue 10, bug 3: an in-training eval must not reseed the caller's random streams
def _rng_states():
    import random, torch
    return random.getstate(), np.random.get_state(), torch.get_rng_state()

def _same_states(a, b):
    import torch
    return a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1])) and torch.equal(a[2], b[2])

@pytest.mark.parametrize("call", ["completions_for", "win_rate"])
def test_eval_leaves_global_rng_alone(call):
    "Generating inside an eval restores torch, Python `random` and NumPy states: later draws are not a fresh seed's stream."
    import random, torch
    from dpo_notes.core import seed_everything
    from dpo_notes.evals import completions_for
    from dpo_notes.toy import load_toy, reward
    model, tok = load_toy("s")
    prompts = ["alice reviews the phone :", "bob reviews the kettle :"]
    seed_everything(123); torch.rand(3); random.random(); np.random.rand()     # a stream mid-way, as in training
    before = _rng_states()
    if call == "completions_for": out = completions_for(model, prompts, tok, do_sample=True, seed=0, max_new_tokens=8)
    else: out = win_rate(model, model, prompts, RuleJudge(reward), tok, do_sample=True, seed=0, max_new_tokens=8)
    assert _same_states(before, _rng_states())
    after = (torch.rand(4), random.random(), float(np.random.rand()))
    seed_everything(0)                                                       # what the old code left behind
    fresh = (torch.rand(4), random.random(), float(np.random.rand()))
    assert not torch.equal(after[0], fresh[0]) and after[1] != fresh[1] and after[2] != fresh[2]


def test_eval_samples_still_seeded():
    "The eval's own samples depend on `seed` only, not on the caller's RNG state."
    import torch
    from dpo_notes.evals import completions_for
    from dpo_notes.toy import load_toy
    model, tok = load_toy("s")
    prompts = ["alice reviews the phone :", "bob reviews the kettle :", "carol reviews the tent :"]
    torch.manual_seed(1); a = completions_for(model, prompts, tok, do_sample=True, seed=5, max_new_tokens=12)
    torch.manual_seed(2); b = completions_for(model, prompts, tok, do_sample=True, seed=5, max_new_tokens=12)
    c = completions_for(model, prompts, tok, do_sample=True, seed=6, max_new_tokens=12)
    assert a == b and a[0] != c[0]
