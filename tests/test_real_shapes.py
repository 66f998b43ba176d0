"""The paper's component shapes meet the code: CLIP ViT-L/14-336 (576 patch tokens + CLS), SigLIP so400m/14-384
(729 tokens, no CLS) and DINOv2-L/14 with 4 registers (256 tokens at its 224 crop), each with the presets the VLM
uses (`clip-l-vlm` at the 4096-wide fusion of Vicuna-7B, `llava-baseline`). Random weights in bfloat16, full widths,
patch and image sizes, and the processors the real checkpoints ship; the towers are cut to 4 blocks, since the token
grid and every width depend on the config, not on the depth. Forward only here: tests/test_real_shapes_train.py
trains both stages at these widths on 2 DeepSpeed ranks, and `python -m vitsplit_vlm.plan` sizes them
(tests/test_plan.py)."""
import pytest
import torch
from PIL import Image
from transformers import AutoModel

from vitsplit_vlm.models import VitSplitLlavaProcessor
from vitsplit_vlm.shapes import shape_config, write_config_dir
from vitsplit_vlm.vision import ViTSplit, resolve_split

pytestmark = pytest.mark.real_shape

# name -> (pixels, patch tokens, prefix tokens dropped, tower width)
TOWERS = {
    "clip-vit-large-patch14-336": (336, 576, 1, 1024),
    "siglip-so400m-patch14-384": (384, 729, 0, 1152),
    "dinov2-with-registers-large": (224, 256, 5, 1024),
}
# 384 is not a multiple of 14: SigLIP's patch conv takes a 27 x 27 grid (729 tokens, the last 6 pixel rows and
# columns unused, on its own 729 position embeddings); the split module and the processor follow that grid.


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return write_config_dir("vicuna-7b-v1.5", tmp_path_factory.mktemp("vicuna"))


@pytest.mark.parametrize("name", TOWERS)
def test_the_processor_expands_image_to_the_towers_token_grid(name, lm_dir, tmp_path):
    pixels, tokens, _, _ = TOWERS[name]
    processor = VitSplitLlavaProcessor.from_components(write_config_dir(name, tmp_path / name), lm_dir)
    assert processor.num_image_tokens == tokens
    batch = processor.preprocess_images([Image.new("RGB", (500, 400))])
    assert tuple(batch.shape) == (1, 3, pixels, pixels)


@pytest.mark.parametrize("name", TOWERS)
@pytest.mark.parametrize("preset, width", [("clip-l-vlm", 4096), ("llava-baseline", None)])
def test_split_module_gives_the_lm_width_tokens_at_real_shapes(name, preset, width):
    pixels, tokens, prefix, hidden = TOWERS[name]
    torch.manual_seed(0)
    tower = AutoModel.from_config(shape_config(name, num_layers=4), dtype=torch.bfloat16)
    split = ViTSplit(tower, resolve_split(preset, {"fusion_dim": width} if width else {})).to(torch.bfloat16).eval()
    assert split.parts.num_prefix_tokens == prefix and split.num_tokens(pixels, pixels) == tokens
    with torch.no_grad():
        out = split(torch.randn(1, 3, pixels, pixels, dtype=torch.bfloat16))
    assert tuple(out.tokens.shape) == (1, tokens, width or hidden)
    assert torch.isfinite(out.tokens.float()).all()
    if width:  # the task head starts as an exact copy of the block it replaces
        reference = split.parts.blocks[split.split_index].state_dict()
        for key, value in split.task_blocks[0].state_dict().items():
            torch.testing.assert_close(value, reference[key], rtol=0, atol=0)
