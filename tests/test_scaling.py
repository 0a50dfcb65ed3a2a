"Checks of dpo_notes.scaling: the small run's table, argument validation, the committed CSV's shape."
import math
import pandas as pd
import pytest
from dpo_notes.core import set_threads, data_dir
from dpo_notes.scaling import (SCALING_COLUMNS, SCALING_METHODS, SCALING_SEEDS, run_scaling,
                               run_scaling_seeds, scaling_budget, scaling_results, offline_pairs, check_grid, seed_summary,
                               paired_gaps)

set_threads()

def test_small_run(tmp_path):
    out = tmp_path / "scaling.csv"
    df = run_scaling(sizes=("s",), steps=1, batch_size=4, n_eval=16, out_csv=out, verbose=False)
    assert df.shape == (len(SCALING_METHODS), len(SCALING_COLUMNS))
    assert list(df.method) == list(SCALING_METHODS)
    for c in ("win_rate", "lo", "hi", "distinct_rate", "finished"): assert df[c].between(0, 1).all(), c
    assert (df.lo <= df.win_rate).all() and (df.win_rate <= df.hi).all()
    assert list(df.steps) == [0, 1, 1, 1] and list(df.pairs) == [0, 4, 4, 4]
    assert list(df.learning_rate) == [0.0, 2e-3, 2e-3, 2e-3]
    back = pd.read_csv(out)
    assert list(back.columns) == list(SCALING_COLUMNS) and len(back) == len(df)
    res = scaling_results(df)
    assert list(res) == list(SCALING_METHODS) and all(len(v) == 1 for v in res.values())

def test_same_seed_same_table():
    kw = dict(sizes=("s",), methods=("SFT", "online DPO"), steps=1, batch_size=4, n_eval=8, verbose=False)
    a, b = run_scaling(**kw), run_scaling(**kw)
    timings = [c for c in a.columns if c.endswith("seconds")]          # wall and CPU time vary from run to run
    pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings))

@pytest.mark.parametrize("kw,field", [(dict(sizes=("xl",)), "sizes"), (dict(methods=("PPO",)), "methods"),
                                      (dict(steps=-1), "steps"), (dict(sizes=()), "sizes"),
                                      (dict(sizes=("s", "l"), learning_rate={"s": 1e-3}), "learning_rate")])
def test_bad_arguments(kw, field):
    with pytest.raises(ValueError, match=field): run_scaling(**kw, verbose=False)

def test_budget_and_pairs():
    assert scaling_budget(5, 16)["max_steps"] == 5
    with pytest.raises(ValueError, match="batch_size"): scaling_budget(batch_size=0)
    p = offline_pairs(10, seed=2)
    assert len(p) == 10 and p == offline_pairs(10, seed=2)

def test_committed_csv():
    df = pd.read_csv(data_dir() / "scaling_results.csv")
    assert list(df.columns) == list(SCALING_COLUMNS)
    assert set(df.method) == set(SCALING_METHODS) and set(df["size"]) == set(SCALING_SEEDS) and len(df) == 4 * len(SCALING_SEEDS)
    for c in ("win_rate", "lo", "hi", "distinct_rate"): assert df[c].between(0, 1).all(), c
    assert not df.win_rate.isna().any()

def test_committed_seeds_csv():
    seeds = pd.read_csv(data_dir() / "scaling_results_seeds.csv")
    assert list(seeds.columns) == [*SCALING_COLUMNS, "seed"]
    assert {z: tuple(sorted(g.seed.unique())) for z, g in seeds.groupby("size")} == SCALING_SEEDS
    assert len(seeds) == len(SCALING_METHODS) * sum(map(len, SCALING_SEEDS.values()))
    seed0 = pd.read_csv(data_dir() / "scaling_results.csv")           # seed 0 of the seeds table, row for row
    pd.testing.assert_frame_equal(seeds[seeds.seed == 0].drop(columns="seed").reset_index(drop=True), seed0)
    summ = seed_summary(seeds)
    assert all(summ.loc[(m, z), "n"] == len(SCALING_SEEDS[z]) for m, z in summ.index)

def test_seeds_stack():
    kw = dict(sizes=("s",), methods=("SFT",), steps=1, batch_size=4, n_eval=4, verbose=False)
    df = run_scaling_seeds((3, 5), **kw)
    assert list(df.seed) == [3, 5] and list(df.columns) == [*SCALING_COLUMNS, "seed"]
    with pytest.raises(ValueError, match="seeds"): run_scaling_seeds((), **kw)

def test_check_grid():
    assert check_grid(["m"], ["SFT"], {"m": 1e-3, "l": 5e-4}) == {"m": 1e-3, "l": 5e-4}
    with pytest.raises(ValueError, match="methods"): check_grid(["m"], [], 1e-3)

def test_summaries():
    df = pd.DataFrame({"method": ["A", "B"] * 4, "size": ["s"] * 4 + ["m"] * 4, "seed": [0, 0, 1, 1] * 2,
                       "win_rate": [0.5, 0.25, 0.75, 0.5, 0.1, 0.3, 0.2, 0.2]})
    s = seed_summary(df)
    assert s.loc[("A", "s"), "mean"] == pytest.approx(0.625) and s.loc[("A", "s"), "sd"] == pytest.approx(0.125 * math.sqrt(2))
    g = paired_gaps(df, "A", "B")
    assert g.loc["s"].tolist() == pytest.approx([2, 0.25, 0.0, 2]) and g.loc["m", "ahead"] == 0
    assert g.loc["m", "mean A − B"] == pytest.approx(-0.1)
