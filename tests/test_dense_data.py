"""ADE20K / NYU readers on the synthetic generator's output, and their errors on broken layouts."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitsplit_vlm.dense.config import IMAGENET_MEAN, IMAGENET_STD, DenseModelConfig
from vitsplit_vlm.dense.data import (
    ADE20KDataset, DenseDataConfig, NYUDepthDataset, SyntheticConfig, build_datasets, write_synthetic,
)
from vitsplit_vlm.dense.transforms import DepthPipeline, SegPipeline

STATS = (IMAGENET_MEAN, IMAGENET_STD)
SMALL = SyntheticConfig(num_train=3, num_val=2, height=40, width=50, seed=1)


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("ade"), "ade20k", SMALL)


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("nyu"), "nyu", SMALL)


def test_synthetic_ade20k_layout_and_label_mapping(ade):
    images = sorted((ade / "images" / "training").glob("*.jpg"))
    assert len(images) == 3 and len(list((ade / "images" / "validation").glob("*.jpg"))) == 2
    ann_path = ade / "annotations" / "training" / f"{images[0].stem}.png"
    raw = np.asarray(Image.open(ann_path))
    assert Image.open(ann_path).mode == "L" and set(np.unique(raw)) <= {0, 1, 2, 3, 4} and 0 in raw
    item = ADE20KDataset(ade, "train", num_classes=4)[0]
    labels = item["labels"]
    assert item["pixel_values"].shape == (3, 40, 50) and labels.dtype == torch.long
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)  # reduce_zero_label
    assert np.array_equal(labels.numpy(), expected)


def test_synthetic_nyu_depth_in_metres(nyu):
    depth_png = sorted((nyu / "train" / "depth").glob("*.png"))[0]
    assert Image.open(depth_png).mode == "I;16"
    raw = np.asarray(Image.open(depth_png)).astype(np.float32)
    labels = NYUDepthDataset(nyu, "train")[0]["labels"]
    assert labels.dtype == torch.float32
    np.testing.assert_allclose(labels.numpy(), raw / 1000.0)
    valid = labels[labels > 0]
    assert 1.0 <= float(valid.min()) and float(valid.max()) <= 9.0


def test_generator_is_seeded(tmp_path):
    a = write_synthetic(tmp_path / "a", "nyu", SMALL)
    b = write_synthetic(tmp_path / "b", "nyu", SMALL)
    c = write_synthetic(tmp_path / "c", "nyu", SyntheticConfig(num_train=3, num_val=2, height=40, width=50, seed=2))
    name = "train/depth/synthetic_train_00000.png"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()


def test_training_items_are_cropped_flipped_and_repeatable(ade):
    # Crop and flip only (no rescale, no photometric distortion, no class-ratio redraws): windows can be enumerated.
    plain = DenseDataConfig(crop_size=32, cat_max_ratio=1.0, photometric=False)
    data = ADE20KDataset(ade, "train", SegPipeline(plain, *STATS, 255, train=True), num_classes=4)
    torch.manual_seed(0)
    first = data[1]
    torch.manual_seed(0)
    again = data[1]
    assert first["pixel_values"].shape == (3, 32, 32) and first["labels"].shape == (32, 32)
    assert torch.equal(first["pixel_values"], again["pixel_values"]) and torch.equal(first["labels"], again["labels"])
    whole = ADE20KDataset(ade, "train", num_classes=4)[1]["labels"]
    windows = {(t, l, f) for t in range(9) for l in range(19) for f in (False, True)}
    crops = [whole[t : t + 32, l : l + 32] for t, l, _ in windows]
    matches = [t for t, c in zip(windows, crops) if torch.equal((c.flip(-1) if t[2] else c), first["labels"])]
    assert matches, "a training item must be a (possibly flipped) crop of the image"


def test_crop_larger_than_image_pads_with_ignore_and_no_depth(ade, nyu):
    cfg = DenseDataConfig(crop_size=56, rotate_degree=0)
    seg = ADE20KDataset(ade, "train", SegPipeline(cfg, *STATS, 255, train=True), num_classes=4)[0]["labels"]
    depth = NYUDepthDataset(nyu, "train", DepthPipeline(cfg, *STATS, train=True))[0]["labels"]
    assert seg.shape == depth.shape == (56, 56)
    assert (seg[40:] == 255).all() and (depth[40:] == 0).all()


def test_eval_rescale_keeps_labels_at_full_size(nyu, ade):
    cfg = DenseDataConfig(scale=[100, 20], eigen_crop=False)
    val = NYUDepthDataset(nyu, "val", DepthPipeline(cfg, *STATS, train=False))[0]
    assert val["pixel_values"].shape == (3, 20, 25) and val["labels"].shape == (40, 50)
    seg = ADE20KDataset(ade, "val", SegPipeline(cfg, *STATS, 255, train=False), num_classes=4)[0]
    assert seg["pixel_values"].shape == (3, 20, 25) and seg["labels"].shape == (40, 50)


def test_pair_list_file(nyu, tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("train/rgb/synthetic_train_00001.png train/depth/synthetic_train_00001.png\n\n")
    data = NYUDepthDataset(nyu, "train", list_file=listing)
    assert len(data) == 1 and data.pairs[0][0].name == "synthetic_train_00001.png"
    listing.write_text("train/rgb/synthetic_train_00001.png\n")
    with pytest.raises(ValueError, match=r"train\.txt:1: expected '<rgb path> <depth path>', got 'train/rgb/"):
        NYUDepthDataset(nyu, "train", list_file=listing)


def _copy_ade(ade, tmp_path):
    import shutil

    return shutil.copytree(ade, tmp_path / "ade")


def test_missing_annotation_names_both_files(ade, tmp_path):
    root = _copy_ade(ade, tmp_path)
    (root / "annotations" / "validation" / "synthetic_val_00001.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        ADE20KDataset(root, "val")
    assert str(err.value) == (
        f"ADE20K: no annotation {root}/annotations/validation/synthetic_val_00001.png for image "
        f"{root}/images/validation/synthetic_val_00001.jpg; every image needs a PNG with the same name in "
        "annotations/validation/."
    )


def test_bad_annotation_mode_and_size(ade, tmp_path):
    root = _copy_ade(ade, tmp_path)
    ann = root / "annotations" / "training" / "synthetic_train_00000.png"
    Image.open(ann).convert("RGB").save(ann)
    data = ADE20KDataset(root, "train", num_classes=4)
    with pytest.raises(ValueError, match=r"synthetic_train_00000\.png: annotation mode is 'RGB'; ADE20K annotations are single-channel 8-bit"):
        data[0]
    ann = root / "annotations" / "training" / "synthetic_train_00001.png"
    Image.open(ann).resize((25, 20)).save(ann)
    with pytest.raises(ValueError, match=r"synthetic_train_00001\.png: size 25x20 differs from its image's 50x40\.$"):
        data[1]


def test_class_id_beyond_num_classes(ade):
    with pytest.raises(ValueError, match=r"class id 4 exceeds num_classes=3 \(ids are 0\.\.3\)\.$"):
        for item in ADE20KDataset(ade, "train", num_classes=3):
            pass


def test_eight_bit_depth_and_missing_folders(nyu, tmp_path):
    import shutil

    root = shutil.copytree(nyu, tmp_path / "nyu")
    depth = root / "test" / "depth" / "synthetic_val_00000.png"
    Image.fromarray((np.asarray(Image.open(depth)) // 100).astype(np.uint8)).save(depth)
    with pytest.raises(ValueError, match=r"synthetic_val_00000\.png: depth mode is 'L'; expected a single-channel 16-bit PNG"):
        NYUDepthDataset(root, "val")[0]
    with pytest.raises(FileNotFoundError, match=r"NYU: folder .*/nope/train/rgb not found; expected the layout root/\{train,test\}/rgb/\*\.png"):
        NYUDepthDataset(tmp_path / "nope", "train")


def test_build_datasets_checks_synthetic_class_count(tmp_path):
    cfg = DenseDataConfig(crop_size=28, synthetic=SMALL, max_eval_images=1)
    with pytest.raises(ValueError, match=r"^data\.format=synthetic has 4 classes .*; set model\.num_classes=4 \(it is 150\)\.$"):
        build_datasets(cfg, DenseModelConfig(task="seg"), tmp_path)
    train, val = build_datasets(cfg, DenseModelConfig(task="depth"), tmp_path)
    assert len(train) == 3 and len(val) == 1 and (tmp_path / "data" / "nyu" / "train" / "rgb").is_dir()
