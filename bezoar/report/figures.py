"""The report's plots, drawn with matplotlib and embedded as PNG data URIs (one self-contained file)."""
from __future__ import annotations

import base64
import io
from collections import Counter

from bezoar.records import Record


def _figure(width: float = 7.0, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _encode(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def funnel(table: dict[str, Counter]) -> str:
    """Stacked bars per method: kept, then each rejection reason."""
    fig, ax = _figure()
    methods = sorted(table)
    reasons = sorted({r for counts in table.values() for r in counts if r not in ("generated", "kept")})
    bottoms = [0] * len(methods)
    for label in ["kept"] + reasons:
        values = [table[m].get(label, 0) for m in methods]
        ax.bar(methods, values, bottom=bottoms, label=label)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_ylabel("records")
    ax.set_title("Data funnel: what the filter kept and why it rejected the rest")
    ax.legend(fontsize=7, ncol=2)
    return _encode(fig)


def lengths(kept: list[Record], rejected: list[Record]) -> str:
    fig, axes = _figure(9, 3.2)
    fig.clf()
    for index, (title, pick) in enumerate((("instruction", lambda r: r.instruction), ("response", lambda r: r.response))):
        ax = fig.add_subplot(1, 2, index + 1)
        for label, records in (("kept", kept), ("rejected", rejected)):
            words = [len(pick(r).split()) for r in records]
            if words:
                ax.hist(words, bins=20, alpha=0.6, label=label)
        ax.set_title(f"{title} length (words)")
        ax.legend(fontsize=7)
    return _encode(fig)


def losses(training: dict[str, list[dict]]) -> str:
    fig, ax = _figure()
    for checkpoint, rows in training.items():
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        valid = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        if train:
            line, = ax.plot(*zip(*train), label=f"{checkpoint} train")
            if valid:
                ax.plot(*zip(*valid), linestyle="--", marker="o", color=line.get_color(), label=f"{checkpoint} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss per stage")
    ax.legend(fontsize=7, ncol=2)
    return _encode(fig)


def dpo_rewards(rows: list[dict]) -> str:
    fig, ax = _figure()
    for key, style in (("rewards/accuracies", "-"), ("eval_rewards/accuracies", "--"),
                       ("rewards/margins", "-"), ("eval_rewards/margins", "--")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), linestyle=style, marker=".", label=key)
    ax.set_xlabel("step")
    ax.set_title("DPO reward accuracy and margin (train; eval = held-out)")
    ax.legend(fontsize=7)
    return _encode(fig)


def grpo_rewards(rows: list[dict]) -> str:
    """GRPO per step: the mean reward with its within-group spread, and the mean completion length."""
    fig, ax = _figure()
    points = [(r["step"], r["reward"], r.get("reward_std", 0.0)) for r in rows if "reward" in r]
    steps, means, spreads = zip(*points)
    ax.plot(steps, means, marker=".", label="reward (share of constraints met)")
    ax.fill_between(steps, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                    alpha=0.2, label="± reward std")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    lengths = [(r["step"], r["completions/mean_length"]) for r in rows if "completions/mean_length" in r]
    if lengths:
        twin = ax.twinx()
        twin.plot(*zip(*lengths), color="grey", linestyle="--", label="completion length (tokens)")
        twin.set_ylabel("tokens")
        twin.legend(fontsize=7, loc="lower right")
    ax.set_title("GRPO reward and completion length per step")
    ax.legend(fontsize=7, loc="upper left")
    return _encode(fig)


def mt_bench_categories(summaries: dict[str, dict]) -> str:
    """Grouped bars: MT-Bench score per category for each checkpoint."""
    fig, ax = _figure(9, 3.4)
    names = list(summaries)
    categories = [row["name"] for row in next(iter(summaries.values()))["single"]["rows"]
                  if not row["name"].startswith("turn") and row["name"] != "overall"]
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        rows = {row["name"]: row["score"] for row in summaries[name]["single"]["rows"]}
        ax.bar([c + index * width for c in range(len(categories))], [rows.get(c) or 0 for c in categories],
               width=width, label=name)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))], categories, rotation=20, fontsize=8)
    ax.set_ylim(0, 10)
    ax.set_ylabel("score (1-10)")
    ax.set_title("MT-Bench by category")
    ax.legend(fontsize=7)
    return _encode(fig)


def ifeval_types(summaries: dict[str, dict]) -> str:
    """Grouped horizontal bars: IFEval strict accuracy per instruction type for each checkpoint."""
    names = list(summaries)
    types = sorted({t for summary in summaries.values() for t in summary["by_type"]})
    fig, ax = _figure(9, max(3.4, 0.28 * len(types) + 1))
    height = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        rows = summaries[name]["by_type"]
        ax.barh([t + index * height for t in range(len(types))],
                [rows[t]["strict"] if t in rows else 0 for t in types], height=height, label=name)
    labels = [f"{t} (n={next(s['by_type'][t]['n'] for s in summaries.values() if t in s['by_type'])})" for t in types]
    ax.set_yticks([t + 0.4 - height / 2 for t in range(len(types))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("instruction-level strict accuracy")
    ax.set_title("IFEval by instruction type")
    ax.legend(fontsize=7)
    return _encode(fig)
