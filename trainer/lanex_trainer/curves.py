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
