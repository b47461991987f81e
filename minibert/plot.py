"""The loss / accuracy PNG of a run, drawn from its metrics.jsonl (matplotlib, the `plot` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

from minibert.run_folder import METRICS_FILE, read_metrics


def plot_metrics(run_dir: Path, accuracy: str = "accuracy") -> Path | None:
    """A PNG of the training loss and the validation metrics from metrics.jsonl (None when matplotlib is missing).
    `accuracy` names the accuracy line (pre-training: masked-token accuracy). Both panels span the whole run, so a
    single evaluation is a point at its step, not a lone dot on a 6-step axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install \"minibert[plot]\").", file=sys.stderr)
        return None
    records = read_metrics(run_dir / METRICS_FILE)
    train = [r for r in records if "loss" in r and "eval" not in r]
    evals = [r for r in records if "eval" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        left.plot([r["step"] for r in evals], [r["eval"]["loss"] for r in evals], "o-", label="validation loss")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.set_title("loss")
    left.legend()
    for key in ("accuracy", "f1", "mse", "pearson", "mrr@10", "ndcg@10"):
        points = [(r["step"], r["eval"][key]) for r in evals if key in r["eval"]]
        if points:
            right.plot(*zip(*points), "o-", label=accuracy if key == "accuracy" else key)
    if not any("mse" in r["eval"] for r in evals):
        right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_ylabel("score")
    right.set_title("validation")
    last = max([r["step"] for r in train + evals], default=0)
    for panel in (left, right):
        panel.set_xlim(0, max(last, 1) * 1.03)
    fig.suptitle(run_dir.resolve().name)
    if evals:
        right.legend()
    else:
        right.text(0.5, 0.5, "no validation data", ha="center", va="center", transform=right.transAxes)
    path = run_dir / "metrics.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
