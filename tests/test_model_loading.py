"""load_for_inference: the one loader of the chat and the evaluation (device, dtype, template, clear errors)."""
import json
import re
import shutil

import pytest
import torch
from PIL import Image

from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor
from vitsplit_vlm.models.loading import load_for_inference, resolve_dtype, to_model


def test_auto_is_float32_on_cpu_and_bfloat16_on_cuda():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match=r"^dtype='fp8'; choose auto or one of float32, bfloat16, float16$"):
        resolve_dtype("fp8", "cpu")


def test_loads_eval_model_processor_and_default_template(tiny_vlm_dir):
    model, processor, template = load_for_inference(tiny_vlm_dir)
    assert isinstance(model, VitSplitLlavaForConditionalGeneration) and isinstance(processor, VitSplitLlavaProcessor)
    assert not model.training and model.device == torch.device("cpu") and model.dtype == torch.float32
    assert template == "vicuna_v1" and processor.image_token_id == model.config.image_token_id


def test_bfloat16_model_takes_the_processors_float32_pixels_through_to_model(tiny_vlm_dir):
    model, processor, _ = load_for_inference(tiny_vlm_dir, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    inputs = processor(text=["<image>\nwhat?"], images=[Image.new("RGB", (30, 20), (9, 99, 199))])
    assert inputs["pixel_values"].dtype == torch.float32
    moved = to_model(inputs, model)
    assert moved["pixel_values"].dtype == torch.bfloat16 and moved["input_ids"].dtype == torch.long
    torch.testing.assert_close(moved["pixel_values"], inputs["pixel_values"].to(torch.bfloat16), rtol=0, atol=0)
    out = model.generate(**moved, max_new_tokens=2, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 2)


def test_template_recorded_in_the_config_and_bad_dirs(tiny_vlm_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_vlm_dir, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "conversation_template": "plain"}))
    assert load_for_inference(checkpoint)[2] == "plain"
    assert load_for_inference(checkpoint, template="chat_template")[2] == "chat_template"
    with pytest.raises(ValueError, match=r"^unknown conversation template 'llava'; choose one of plain, vicuna_v1, chat_template$"):
        load_for_inference(checkpoint, template="llava")

    with pytest.raises(FileNotFoundError) as err:
        load_for_inference(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: no config.json; pass a directory written by save_pretrained (a trained or converted checkpoint)"
    )
    model_only = tmp_path / "model_only"
    model_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_vlm_dir / name, model_only / name)
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(model_only))}: cannot load the processor \(.*\); save it next to the "
                                                r"model with VitSplitLlavaProcessor\.save_pretrained"):
        load_for_inference(model_only)
