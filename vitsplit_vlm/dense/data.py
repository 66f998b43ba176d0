"""Dense datasets in their real on-disk layouts, and a seeded synthetic generator that writes those same layouts.

    ADE20K:  root/images/{training,validation}/*.jpg + root/annotations/{training,validation}/<same stem>.png
             (8-bit, 0 = "other" -> ignored, classes 1..150 -> 0..149: mmseg's reduce_zero_label)
    NYU:     root/{train,test}/rgb/*.png|jpg + root/{train,test}/depth/<same stem>.png (16-bit, millimetres, 0 =
             no measurement), or a list file of "<rgb> <depth>" lines relative to root

Items are {"pixel_values": 3 x H x W float, "labels": H x W} (long class ids for ADE20K, float metres for NYU), so
`transformers.default_data_collator` batches them. Without a transform the pixels are RGB 0..255; the tasks pass the
pipelines of `transforms` (augmentation with torch's global RNG, which the Trainer seeds, and normalisation).
Evaluation items keep the labels at their original size; `inference.evaluate` resizes predictions to them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .config import DenseModelConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ADE_SPLITS = {"train": "training", "val": "validation"}
NYU_SPLITS = {"train": "train", "val": "test"}
SYNTHETIC_CLASSES = ("background", "disc", "box", "triangle")  # ADE ids 1..4 on disk, train ids 0..3


@dataclass
class SyntheticConfig:
    num_train: int = 96
    num_val: int = 8
    height: int = 112  # larger than the training crop, so evaluation exercises the sliding window
    width: int = 140
    seed: int = 0


@dataclass
class DenseDataConfig:
    """Where the data is and how it is augmented (see `transforms`: mmseg's ADE20K and the toolbox's NYU pipeline)."""

    format: str = "synthetic"  # "synthetic" | a format the task reads ("ade20k" for seg, "nyu" for depth)
    root: str | None = None  # dataset root; for "synthetic", where it is written (default <output_dir>/data)
    crop_size: int | list[int] = 84  # training crop, square or [h, w] (padded with ignore / no-depth if larger)
    # Keep-ratio rescale into [long, short] (ADE20K: [2048, 512]); in training times a ratio drawn from ratio_range.
    # null keeps the images' size.
    scale: list[int] | None = None
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75  # seg: redraw a crop in which one class covers this share of the labelled pixels
    photometric: bool = True  # seg: mmseg's photometric distortion
    rotate_degree: float = 2.5  # depth: random rotation in +-degrees (probability 0.5); 0 turns it off
    color_jitter: bool = True  # depth: gamma / brightness / colour factors in 0.9..1.1 (probability 0.5)
    eigen_crop: bool = True  # depth: evaluate inside the Eigen crop only
    depth_scale: float = 1000.0  # depth PNG units per metre (NYU: millimetres)
    train_list: str | None = None  # NYU: optional "<rgb> <depth>" list files relative to root
    val_list: str | None = None
    max_eval_images: int | None = None  # evaluate on the first N validation images only
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


class _PairDataset(Dataset):
    """Image/target pairs: decoding and checks here, resizing/augmentation/normalisation in `transform`."""

    def __init__(self, pairs: list[tuple[Path, Path]], transform: Callable | None = None):
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def _load_target(self, path: Path, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_path, target_path = self.pairs[index]
        image = Image.open(image_path).convert("RGB")
        target = self._load_target(target_path, image)  # validated against the image's original size
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)  # RGB 0..255
        if self.transform is not None:
            pixels, target = self.transform(pixels, target)
        return {"pixel_values": pixels, "labels": target}


class ADE20KDataset(_PairDataset):
    """ADEChallengeData2016 layout. `split` is "train" or "val"."""

    def __init__(
        self, root: str | Path, split: str, transform: Callable | None = None, num_classes: int = 150,
        ignore_index: int = 255,
    ):
        root = Path(root)
        image_dir, ann_dir = root / "images" / ADE_SPLITS[split], root / "annotations" / ADE_SPLITS[split]
        pairs = []
        for image_path in _list_images(image_dir, "ADE20K", "root/images/{training,validation}/*.jpg"):
            ann = ann_dir / f"{image_path.stem}.png"
            if not ann.is_file():
                raise FileNotFoundError(
                    f"ADE20K: no annotation {ann} for image {image_path}; every image needs a PNG with the same "
                    f"name in annotations/{ADE_SPLITS[split]}/."
                )
            pairs.append((image_path, ann))
        super().__init__(pairs, transform)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def _load_target(self, path: Path, image: Image.Image) -> torch.Tensor:
        ann = Image.open(path)
        if ann.mode != "L":
            raise ValueError(
                f"{path}: annotation mode is '{ann.mode}'; ADE20K annotations are single-channel 8-bit PNGs "
                "(mode 'L') holding class ids 0..150."
            )
        _check_same_size(path, ann, image)
        ids = torch.from_numpy(np.asarray(ann, dtype=np.int64).copy())
        if int(ids.max()) > self.num_classes:
            raise ValueError(f"{path}: class id {int(ids.max())} exceeds num_classes={self.num_classes} (ids are 0..{self.num_classes}).")
        # reduce_zero_label: 0 ("other") is ignored, 1..N become 0..N-1.
        return torch.where(ids == 0, torch.full_like(ids, self.ignore_index), ids - 1)


class NYUDepthDataset(_PairDataset):
    """NYU-Depth-v2 style RGB + 16-bit depth PNGs. `split` is "train" or "val" (the `test/` folder)."""

    def __init__(
        self, root: str | Path, split: str, transform: Callable | None = None, depth_scale: float = 1000.0,
        list_file: str | Path | None = None,
    ):
        root = Path(root)
        pairs = _read_pair_list(root, Path(list_file)) if list_file else self._scan(root / NYU_SPLITS[split])
        super().__init__(pairs, transform)
        self.depth_scale = depth_scale

    @staticmethod
    def _scan(split_dir: Path) -> list[tuple[Path, Path]]:
        pairs = []
        for rgb in _list_images(split_dir / "rgb", "NYU", "root/{train,test}/rgb/*.png"):
            depth = split_dir / "depth" / f"{rgb.stem}.png"
            if not depth.is_file():
                raise FileNotFoundError(
                    f"NYU: no depth map {depth} for image {rgb}; every image needs a 16-bit PNG with the same name "
                    "in depth/."
                )
            pairs.append((rgb, depth))
        return pairs

    def _load_target(self, path: Path, image: Image.Image) -> torch.Tensor:
        depth = Image.open(path)
        if depth.mode not in ("I;16", "I;16B", "I"):  # Pillow opens 16-bit grey PNGs as I;16 (older ones as I)
            raise ValueError(
                f"{path}: depth mode is '{depth.mode}'; expected a single-channel 16-bit PNG (mode 'I;16') "
                "with depth in millimetres and 0 where there is no measurement."
            )
        _check_same_size(path, depth, image)
        return torch.from_numpy(np.asarray(depth, dtype=np.float32) / self.depth_scale)


def _list_images(folder: Path, name: str, layout: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: folder {folder} not found; expected the layout {layout}.")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    return images


def _read_pair_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{list_file}:{number}: expected '<rgb path> <depth path>', got {line!r}.")
        rgb, depth = root / fields[0], root / fields[1]
        for path in (rgb, depth):
            if not path.is_file():
                raise FileNotFoundError(f"{list_file}:{number}: {path} does not exist.")
        pairs.append((rgb, depth))
    if not pairs:
        raise ValueError(f"{list_file}: no image/depth pairs listed.")
    return pairs


def _check_same_size(path: Path, target: Image.Image, image: Image.Image) -> None:
    if target.size != image.size:
        raise ValueError(
            f"{path}: size {target.size[0]}x{target.size[1]} differs from its image's {image.size[0]}x{image.size[1]}."
        )


def build_datasets(cfg: DenseDataConfig, model: DenseModelConfig, output_dir: str | Path) -> tuple[Dataset, Dataset]:
    """The task's train (augmented) and validation (whole images) datasets; a synthetic set is written first."""
    from .tasks import get_task  # the tasks build their datasets from the readers above

    task = get_task(model.task)
    root = cfg.root
    if cfg.format == "synthetic":
        task.check_synthetic(model)
        layout = task.synthetic_layout
        root = write_synthetic(Path(root or Path(output_dir) / "data") / layout, layout, cfg.synthetic)
    elif cfg.format not in task.formats:
        raise ValueError(
            f"data.format={cfg.format!r} is not a format of task {model.task!r}; choose "
            f"{', '.join(repr(f) for f in ('synthetic', *task.formats))}."
        )
    elif root is None:
        raise ValueError(f"data.root is required for data.format={cfg.format}.")
    train, val = task.datasets(root, cfg, model)
    if cfg.max_eval_images:
        val = torch.utils.data.Subset(val, range(min(cfg.max_eval_images, len(val))))
    return train, val


# ----------------------------------------------------------------------------------------------------------------
# Synthetic scenes: coloured shapes in front of a receding ground plane. Class = shape kind (each kind has its own
# hue, jittered); depth darkens colours (fog), so both tasks are learnable from pixels by a small random-init tower.

_HUES = {1: (0.55, 0.55, 0.50), 2: (0.90, 0.25, 0.20), 3: (0.20, 0.75, 0.30), 4: (0.25, 0.35, 0.90)}


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: RGB uint8, ADE-style class ids uint8 (0 = ignored boundary), depth float32 metres (0 = hole)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    far, near = rng.uniform(6.0, 9.0), rng.uniform(2.5, 4.0)
    depth = far + (near - far) * ys / (height - 1)  # ground plane: far at the top, near at the bottom
    labels = np.ones((height, width), np.uint8)
    albedo = np.broadcast_to(np.array(_HUES[1], np.float32), (height, width, 3)).copy()
    albedo *= rng.uniform(0.85, 1.15, (height, width, 1)).astype(np.float32)  # texture
    shapes = [(rng.uniform(1.0, 5.0), int(rng.integers(2, 5))) for _ in range(int(rng.integers(2, 5)))]
    for shape_depth, kind in sorted(shapes, reverse=True):  # far to near, so nearer shapes occlude
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        r = rng.uniform(0.12, 0.25) * min(height, width)
        if kind == 2:
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= r**2
        elif kind == 3:
            mask = (np.abs(ys - cy) <= r) & (np.abs(xs - cx) <= r * rng.uniform(0.6, 1.0))
        else:
            mask = (ys <= cy + r) & (ys - (cy - r) >= 2 * np.abs(xs - cx))
        labels[mask] = kind
        depth[mask] = shape_depth
        albedo[mask] = np.clip(np.array(_HUES[kind]) + rng.uniform(-0.1, 0.1, 3), 0, 1)
        labels[mask & ~_erode(mask)] = 0  # a 1 px "other" outline, ignored like ADE20K's label 0
    fog = np.exp(-depth / 8.0)[..., None]
    rgb = np.clip(albedo * (0.25 + fog) * 255 + rng.normal(0, 4, albedo.shape), 0, 255).astype(np.uint8)
    holes = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(0, 3))):  # missing sensor readings, as in raw Kinect depth
        y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
        holes[y : y + 8, x : x + 8] = True
    return rgb, labels, np.where(holes, 0.0, depth).astype(np.float32)


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def write_synthetic(root: str | Path, layout: str, cfg: SyntheticConfig) -> Path:
    """Write a seeded synthetic set in the ADE20K (`layout="ade20k"`) or NYU (`"nyu"`) layout; returns root."""
    if layout not in ("ade20k", "nyu"):
        raise ValueError(f"Unknown synthetic layout '{layout}'; choose 'ade20k' or 'nyu'.")
    root = Path(root)
    rng = np.random.default_rng(cfg.seed)
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        if layout == "ade20k":
            image_dir, target_dir = root / "images" / ADE_SPLITS[split], root / "annotations" / ADE_SPLITS[split]
        else:
            image_dir, target_dir = root / NYU_SPLITS[split] / "rgb", root / NYU_SPLITS[split] / "depth"
        image_dir.mkdir(parents=True, exist_ok=True)
        target_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rgb, labels, depth = _scene(rng, cfg.height, cfg.width)
            name = f"synthetic_{split}_{i:05d}"
            if layout == "ade20k":
                Image.fromarray(rgb).save(image_dir / f"{name}.jpg", quality=95)
                Image.fromarray(labels).save(target_dir / f"{name}.png")
            else:
                Image.fromarray(rgb).save(image_dir / f"{name}.png")
                Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(target_dir / f"{name}.png")
    return root
