"""Dense tasks (semantic segmentation, monocular depth) on the same ViT-Split module the VLM uses."""
from .config import DenseModelConfig
from .data import ADE20KDataset, DenseDataConfig, NYUDepthDataset, SyntheticConfig, build_datasets, write_synthetic
from .heads import DepthHead, LinearSegHead, MultiScaleSegHead
from .inference import evaluate, predict, sliding_window
from .metrics import DepthMetric, SegmentationMetric
from .model import DenseOutput, DenseSplitModel, load_split_from_vlm
from .tasks import TASKS, DenseTask, get_task, register_task
from .tasks.depth import silog_loss
from .tasks.seg import segmentation_loss

__all__ = [
    "ADE20KDataset", "DenseDataConfig", "NYUDepthDataset", "SyntheticConfig", "build_datasets", "write_synthetic",
    "DepthHead", "LinearSegHead", "MultiScaleSegHead", "evaluate", "predict", "sliding_window", "DepthMetric",
    "SegmentationMetric", "DenseModelConfig", "DenseOutput", "DenseSplitModel", "load_split_from_vlm", "TASKS",
    "DenseTask", "get_task", "register_task", "silog_loss", "segmentation_loss",
]
