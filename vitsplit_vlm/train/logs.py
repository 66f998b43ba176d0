"""Run records beside the Trainer's own: a plain-text log file and a loss-curve PNG per stage.

The Trainer already shows a progress bar and writes TensorBoard events; what it lacks is a file a person can read
after the fact (config, trainable parameters, data counts, losses) and a picture of the loss that needs no
TensorBoard server. Only the main process writes either.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)
# Per-step records go to the file only: the Trainer already prints them on the console.
history = logging.getLogger("vitsplit_vlm.history")

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """The package's loggers to the console and to `log_file` (appended: a resumed run continues it).

    Other ranks than the main one pass no file and `level=logging.WARNING`, so each message appears once.
    """
    root = logging.getLogger("vitsplit_vlm")
    for log in (root, history):
        log.setLevel(level)
        log.propagate = False
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(file_handler)
        history.addHandler(file_handler)


def plot_loss_curve(log_history: list[dict], path: str | Path, title: str) -> Path | None:
    """Training loss (and learning rate on a twin axis) against the global step; None when nothing was logged."""
    points = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    rates = [(entry["step"], entry["learning_rate"]) for entry in log_history if "learning_rate" in entry]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*points), color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if rates:
        lr_ax = ax.twinx()
        lr_ax.plot(*zip(*rates), color="tab:orange", alpha=0.6, label="learning rate")
        lr_ax.set_ylabel("learning rate")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class RunLogCallback(TrainerCallback):
    """Copies every Trainer log entry into the log file and draws `loss_curve.png` when the stage ends."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            history.info("[%s] step %d: %s", self.stage, state.global_step, json.dumps(logs, sort_keys=True))

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            png = plot_loss_curve(state.log_history, Path(args.output_dir) / "loss_curve.png", f"{self.stage} loss")
            if png:
                logger.info("[%s] loss curve: %s", self.stage, png)
