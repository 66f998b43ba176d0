"""convert_llava_hf on a tiny llava-hf checkpoint built here from the tiny CLIP + Llama."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor
from vitsplit_vlm.models.convert_llava_hf import convert_llava_hf, main

def _make_llava_hf(tiny_ckpts, out, legacy: bool = False, **config) -> LlavaForConditionalGeneration:
    tower = CLIPVisionModel.from_pretrained(tiny_ckpts["clip"])
    lm = AutoModelForCausalLM.from_pretrained(tiny_ckpts["llama"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpts["llama"])
    settings = dict(vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=4)
    settings.update(config)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=tower.config.to_dict(), text_config=lm.config.to_dict(),
                    image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **settings)
    ).eval()
    llava.model.vision_tower.load_state_dict(tower.state_dict())
    llava.model.language_model.load_state_dict(lm.model.state_dict())
    llava.lm_head.load_state_dict(lm.lm_head.state_dict())
    llava.save_pretrained(out)
    LlavaProcessor(AutoImageProcessor.from_pretrained(tiny_ckpts["clip"]), tokenizer, patch_size=14,
                   vision_feature_select_strategy="default").save_pretrained(out)
    if legacy:  # the Hub's llava-1.5 files also nest the tower under `vision_model.` (transformers 4 layout)
        weights = load_file(out / "model.safetensors")
        renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in weights.items()}
        assert renamed.keys() != weights.keys()
        save_file(renamed, out / "model.safetensors", metadata={"format": "pt"})
    return llava


def _inputs(image_token_id):
    ids = torch.tensor([[1, 5, *[image_token_id] * 4, 6, 7], [1, *[image_token_id] * 4, 8, 9, 10]])
    return ids, torch.randn(2, 3, 28, 28)


@pytest.mark.parametrize("legacy", [False, True])
def test_converted_baseline_has_the_source_logits(tiny_ckpts, tmp_path, legacy):
    source = _make_llava_hf(tiny_ckpts, tmp_path / "src", legacy=legacy)
    convert_llava_hf(tmp_path / "src", tmp_path / "dst", "llava-baseline")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst").eval()
    assert isinstance(model, VitSplitLlavaForConditionalGeneration)
    ids, pixels = _inputs(model.config.image_token_id)
    with torch.no_grad():
        ours, theirs = model(ids, pixels).logits, source(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_converted_split_model_starts_from_the_tower(tiny_ckpts, tmp_path):
    source = _make_llava_hf(tiny_ckpts, tmp_path / "src")
    main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst")])  # default preset: clip-l-vlm
    model = VitSplitLlavaForConditionalGeneration.from_pretrained(tmp_path / "dst").eval()
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["split"]["use_split"] is True
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        penultimate = source.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        task = model.vision(pixels).task_map.flatten(2).transpose(1, 2)
    torch.testing.assert_close(task, penultimate, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.projector[2].weight, source.model.multi_modal_projector.linear_2.weight)
    assert all(p.requires_grad for p in model.vision.prior_head.parameters())
    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    assert isinstance(processor, VitSplitLlavaProcessor) and processor.num_image_tokens == model.num_image_tokens
    inputs = processor(text="<image> what is it?", images=Image.new("RGBA", (50, 40)))
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(vision_feature_layer=[-2, -1]), "vision_feature_layer=[-2, -1] concatenates several layers; ViT-Split reads one."),
        (dict(vision_feature_select_strategy="full"), "vision_feature_select_strategy='full' does not drop exactly the "
         "tower's 1 prefix token(s), which is what ViT-Split feeds the projector."),
        (dict(projector_hidden_act="relu"), "the projector (act 'relu', bias True) is not LLaVA-1.5's mlp2x_gelu (GELU, with biases)."),
    ],
)
def test_unsupported_sources_are_clear_errors(tiny_ckpts, tmp_path, config, message):
    _make_llava_hf(tiny_ckpts, tmp_path / "src", **config)
    with pytest.raises(ValueError) as err:
        convert_llava_hf(tmp_path / "src", tmp_path / "dst")
    assert str(err.value) == f"{tmp_path / 'src'}: {message}"
    assert not (tmp_path / "dst").exists()


def test_conversion_is_reproducible_from_its_seed(tiny_ckpts, tmp_path):
    _make_llava_hf(tiny_ckpts, tmp_path / "src")
    weights = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / name), "--seed", str(seed)])
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    assert weights["a"].keys() == weights["b"].keys()
    assert all(torch.equal(v, weights["b"][k]) for k, v in weights["a"].items())
    fresh = [k for k in weights["a"] if k.startswith(("vision.prior_head.", "vision.fusion."))]
    assert fresh and all(not torch.equal(weights["a"][k], weights["c"][k]) for k in fresh if k.endswith("weight"))
