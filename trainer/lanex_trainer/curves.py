"""Loss and accuracy curves of a run as one PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(steps, [r["train_loss"] for r in history], marker="o", label="train")
    if any("val_loss" in r for r in history):
        loss_axis.plot([r["step"] for r in history if "val_loss" in r],
                       [r["val_loss"] for r in history if "val_loss" in r], marker="o", label="validation")
    loss_axis.set(title="loss", xlabel="step")
    loss_axis.legend()
    validated = [r for r in history if "val_accuracy" in r]
    accuracy_axis.plot([r["step"] for r in validated], [r["val_accuracy"] for r in validated], marker="o", color="green")
    accuracy_axis.set(title="validation TuSimple accuracy", xlabel="step", ylim=(0, 1))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_comparison(histories: dict[str, list[dict]], path: Path, metric: str = "accuracy") -> None:
    """One plot of the validation `metric` per epoch of several runs (a sweep's trials), one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for name, history in histories.items():
        points = sorted((int(h["epoch"]), float(h[metric])) for h in history
                        if isinstance(h.get("epoch"), int) and isinstance(h.get(metric), (int, float)))
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axis.set(title=f"validation TuSimple {metric} per epoch", xlabel="epoch", ylabel=metric)
    if metric == "accuracy":
        axis.set_ylim(0, 1)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
