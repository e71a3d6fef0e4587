"""``training_loss.png``: train loss per logged step and eval loss, from ``trainer_log.jsonl`` rows."""

from __future__ import annotations

from pathlib import Path

from steam_persona.common import atomic


def plot_loss(rows: list[dict], target: str | Path, title: str = "training loss") -> None:
    """Write a PNG of ``loss`` (and ``eval_loss`` when present) against ``current_steps``.

    Always writes a file, even with a single point or none (then the axes say "no steps logged").
    Uses matplotlib's Agg backend (no display needed); written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["current_steps"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["current_steps"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), marker="o" if len(train) < 30 else None, label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="s", label="eval loss (training weights)")
    if not train and not evals:
        ax.text(0.5, 0.5, "no steps logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per learned token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
