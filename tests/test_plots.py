"Charts (dpo_notes.plots): each returns a Figure, draws the numbers it was given, saves a PNG when asked."
import math
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from dpo_notes.evals import summarize_outcomes
from dpo_notes.plots import (plot_win_rates, plot_history, plot_dpo_history, plot_scaling, human_size, method_color,
                             TRL_TLDR_SCALING, DPO_METRICS)

@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")

def test_win_rates(tmp_path):
    r = summarize_outcomes([1.0] * 30 + [0.0] * 10)
    fig = plot_win_rates({"SFT": (0.5, 0.41, 0.59), "online DPO": r}, path=tmp_path / "a" / "wr.png")
    assert (tmp_path / "a" / "wr.png").stat().st_size > 1000
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.5, 0.75])
    caps = sorted(y for l in ax.lines if l.get_marker() == "_" for y in l.get_ydata())
    assert caps == pytest.approx(sorted([0.41, 0.59, r.lo, r.hi]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["SFT", "online DPO"]

def test_history_panels_and_nans():
    steps = np.arange(0, 50, 10)
    a = pd.DataFrame({"step": steps, "objective/kl": steps * 0.1, "objective/scores": steps * 0.2,
                      "win_rate": [0.5, np.nan, 0.6, np.nan, 0.7]})
    fig = plot_history({"online DPO": a, "XPO": a.assign(**{"objective/kl": steps * 0.05})})
    assert len(fig.axes) == 3
    assert list(fig.axes[0].lines[0].get_xdata()) == [0, 20, 40]
    assert list(fig.axes[2].lines[1].get_ydata()) == pytest.approx(steps * 0.05)
    with pytest.raises(ValueError, match="in no history"): plot_history(a, metrics=["loss"])

def test_dpo_history(tmp_path):
    h = pd.DataFrame({"step": [1, 2, 3], "loss": [0.69, 0.6, 0.5], "rewards/margins": [0, 0.1, 0.3],
                      "rewards/accuracies": [0.0, 0.6, 0.8]})
    fig = plot_dpo_history(h, path=tmp_path / "dpo.png")
    assert (tmp_path / "dpo.png").exists()
    assert [a.get_title() for a in fig.axes] == list(DPO_METRICS)
    assert list(fig.axes[1].lines[0].get_ydata()) == [0, 0.1, 0.3]

def test_scaling():
    fig = plot_scaling(TRL_TLDR_SCALING)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1B", "2.8B", "6.9B"]
    labels = ax.get_legend_handles_labels()[1]
    assert set(labels) == {"SFT", "offline DPO", "online DPO", "reference (win rate 0.5)"}
    ref = [l for l in ax.lines if l.get_linestyle() == "--"]
    assert len(ref) == 1 and list(ref[0].get_ydata()) == [0.5, 0.5]
    fig = plot_scaling({"XPO": {2e5: (0.6, 0.5, 0.7), 1e6: (0.7, 0.6, 0.8)}})
    assert len(fig.axes[0].containers[0].lines[2]) == 1                   # error bars drawn
    with pytest.raises(ValueError, match="empty"): plot_scaling({"SFT": {}})

def test_helpers():
    assert [human_size(s) for s in (1e9, 2.8e9, 2e5, 4e6)] == ["1B", "2.8B", "0.2M", "4M"]
    assert method_color("Online-DPO") == method_color("online dpo") == "tab:orange"
    assert TRL_TLDR_SCALING["online DPO"] == {1.0e9: 0.542, 2.8e9: 0.746, 6.9e9: 0.796}
