"""Training, chat and evaluation decode images by one rule (the processor's to_rgb): same pixels for any mode."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitsplit_vlm.chat import load_image
from vitsplit_vlm.data.llava_json import LlavaDataset
from vitsplit_vlm.eval.runner import EvalItem, _load_images


def _palette_with_transparency(path):
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(0, (0, 0, 16, 32))  # left half: index 0, the transparent one (black behind it)
    pal.save(path, transparency=0)


def _rgba(path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (0, 0, 255, 255)
    rgba[:, 16:] = (0, 0, 255, 0)
    Image.fromarray(rgba, "RGBA").save(path)


def _gray_with_colour_key(path):
    gray = Image.new("L", (32, 32), 0)
    gray.paste(200, (16, 0, 32, 32))
    gray.save(path, transparency=0)  # tRNS: grey 0 is transparent


@pytest.mark.parametrize("make", [_palette_with_transparency, _rgba, _gray_with_colour_key])
def test_dataset_chat_and_eval_runner_give_the_same_pixels(make, tmp_path, tiny_tokenizer, tiny_processor):
    make(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as image:
        expected_rgb = np.asarray(image.convert("RGBA"))
    white = expected_rgb[..., 3] == 0
    (tmp_path / "d.json").write_text(json.dumps(
        [{"id": "x", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))
    dataset = LlavaDataset(tmp_path / "d.json", tmp_path, tiny_tokenizer, tiny_processor.preprocess_images,
                           num_image_tokens=tiny_processor.num_image_tokens, cache_dir=tmp_path / "hf")
    training = dataset[0]["pixel_values"]
    chat = tiny_processor.preprocess_images([load_image(tmp_path / "x.png")])[0]
    evaluation = tiny_processor.preprocess_images(_load_images([EvalItem(1, tmp_path / "x.png", "q")]))[0]
    assert torch.equal(training, chat) and torch.equal(training, evaluation)
    # and the rule is the one documented: transparent pixels are white, opaque ones keep their colour
    rgb = np.asarray(load_image(tmp_path / "x.png"))
    assert white.any() and (rgb[white] == 255).all()
    assert (rgb[~white] == expected_rgb[~white][:, :3]).all()
