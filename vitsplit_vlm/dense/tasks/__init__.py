"""Dense tasks by name. A task is one module defining a `DenseTask` (head, loss, output, metric, datasets) that
registers itself here; `DenseSplitModel`, the data builder, evaluation and the CLI look tasks up by name."""
from .base import TASKS, DenseTask, get_task, register_task
from . import depth, seg  # noqa: E402,F401  (each registers its task)

__all__ = ["TASKS", "DenseTask", "get_task", "register_task"]
