"""The VLM against independent computations: the tower's own forward, Hugging Face Llava, save/load round trips."""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vitsplit_vlm.models import VitSplitLlavaConfig, VitSplitLlavaForConditionalGeneration
from vitsplit_vlm.vision import ViTSplitConfig, load_tower, split_preset

K = 4  # visual tokens per 28 px image with a 14 px patch


def _build(tiny_ckpts, preset="clip-l-vlm", lm="llama", tower="clip", **kwargs) -> VitSplitLlavaForConditionalGeneration:
    split = split_preset(preset) if isinstance(preset, str) else preset
    return VitSplitLlavaForConditionalGeneration.from_components(tiny_ckpts[tower], tiny_ckpts.get(lm, lm), split, **kwargs)


def _prompt(image_token_id: int, text=(5, 6, 7), images: int = 1) -> torch.Tensor:
    return torch.tensor([[1, *([image_token_id] * K * images), *text]])


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_from_components_copies_tower_and_lm_and_task_head_reproduces_penultimate_features(tiny_ckpts):
    model = _build(tiny_ckpts).eval()
    tower, lm = load_tower(tiny_ckpts["clip"]), AutoModelForCausalLM.from_pretrained(tiny_ckpts["llama"])
    _assert_same_state(model.vision.tower.state_dict(), tower.state_dict())
    _assert_same_state(model.language_model.state_dict(), lm.state_dict())
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        penultimate = tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        task_tokens = model.vision(pixels).task_map.flatten(2).transpose(1, 2)
    torch.testing.assert_close(task_tokens, penultimate, atol=1e-5, rtol=0)
    assert model.config.image_token_id == AutoConfig.from_pretrained(tiny_ckpts["llama"]).vocab_size - 1
    assert model.generation_config.pad_token_id == lm.generation_config.pad_token_id
    bias = model.projector[0].bias  # fresh layers keep PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0 < bias.abs().max() <= 32**-0.5 and model.vision.fusion[2].bias.abs().max() <= (9 * 32) ** -0.5


def test_save_load_round_trip_through_auto_classes(tiny_ckpts, tmp_path):
    model = _build(tiny_ckpts).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "vitsplit_llava" and config["projector_type"] == "mlp2x_gelu"
    assert config["split"] == split_preset("clip-l-vlm").to_dict()
    assert config["vision_config"]["model_type"] == "clip_vision_model" and config["text_config"]["model_type"] == "llama"
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        prefixes = {".".join(k.split(".")[:2]) for k in f.keys()}
    assert prefixes == {
        "vision.tower", "vision.task_blocks", "vision.prior_head", "vision.fusion", "projector.0", "projector.2",
        "language_model.model", "language_model.lm_head",
    }
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VitSplitLlavaConfig)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(loaded, VitSplitLlavaForConditionalGeneration)
    _assert_same_state(loaded.state_dict(), model.state_dict())
    assert not any(p.requires_grad for p in loaded.vision.tower.parameters())
    assert all(p.requires_grad for p in loaded.vision.task_blocks.parameters())
    ids, pixels = _prompt(model.config.image_token_id), torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, pixels).logits, model(ids, pixels).logits, rtol=0, atol=0)


def test_baseline_logits_equal_hf_llava_with_the_same_weights(tiny_ckpts):
    model = _build(tiny_ckpts, "llava-baseline").eval()
    assert not any(p.requires_grad for p in model.vision.parameters())
    tower = CLIPVisionModel.from_pretrained(tiny_ckpts["clip"])
    lm = AutoModelForCausalLM.from_pretrained(tiny_ckpts["llama"])
    image_token_id = model.config.image_token_id
    reference = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=tower.config.to_dict(), text_config=lm.config.to_dict(), image_token_id=image_token_id,
            vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=K,
        )
    ).eval()
    reference.model.vision_tower.load_state_dict(tower.state_dict())
    reference.model.language_model.load_state_dict(lm.model.state_dict())
    reference.lm_head.load_state_dict(lm.lm_head.state_dict())
    reference.model.multi_modal_projector.linear_1.load_state_dict(model.projector[0].state_dict())
    reference.model.multi_modal_projector.linear_2.load_state_dict(model.projector[2].state_dict())
    ids = torch.tensor([[1, 5, *[image_token_id] * K, 6, 7, 8], [1, *[image_token_id] * K, 9, 10, 11, 12]])
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ours, theirs = model(ids, pixels).logits, reference(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def _tiny_lm(tiny_ckpts, tmp_path, kind: str):
    """A tiny Qwen2 (tied embeddings) or Mistral (sliding window) sharing the tiny Llama's tokenizer and vocab."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpts["llama"])
    sizes = dict(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    if kind == "qwen2":
        lm = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **sizes))
    else:
        lm = MistralForCausalLM(MistralConfig(sliding_window=16, **sizes))
    lm.save_pretrained(tmp_path / kind)
    tokenizer.save_pretrained(tmp_path / kind)
    return tmp_path / kind, lm


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_other_causal_lms_round_trip_and_keep_their_tying(tiny_ckpts, tmp_path, kind):
    path, lm = _tiny_lm(tiny_ckpts, tmp_path, kind)
    model = _build(tiny_ckpts, ViTSplitConfig(task_layers=2, prior_layers=[1, 3]), lm=path, tower="dinov2").eval()
    assert type(model.language_model) is type(lm)
    ids, pixels = _prompt(model.config.image_token_id), torch.randn(1, 3, 28, 28)
    model.save_pretrained(tmp_path / "vlm")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")
    tied = lambda m: m.get_input_embeddings().weight.data_ptr() == m.get_output_embeddings().weight.data_ptr()
    assert tied(model) == tied(loaded) == (kind == "qwen2")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, pixels).logits, model(ids, pixels).logits, rtol=0, atol=0)
    out = loaded.generate(ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)


def test_bf16_loading_runs_in_bf16(tiny_ckpts, tmp_path):
    model = _build(tiny_ckpts, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.save_pretrained(tmp_path)
    loaded = VitSplitLlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    logits = loaded(_prompt(model.config.image_token_id), torch.randn(1, 3, 28, 28)).logits  # fp32 pixels are cast
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_projector_types(tiny_ckpts):
    linear = _build(tiny_ckpts, projector_type="linear")
    assert isinstance(linear.projector, torch.nn.Linear) and linear.projector.weight.shape == (64, 32)
    # The paper's VLM variant: the fusion head outputs the LM width directly and no MLP follows.
    identity = _build(tiny_ckpts, ViTSplitConfig(task_layers=1, prior_layers=[-2], feature_layer=-2, fusion_dim=64),
                      projector_type="identity")
    assert identity.get_image_features(torch.randn(1, 3, 28, 28)).shape == (1, K, 64)
    with pytest.raises(ValueError) as err:
        _build(tiny_ckpts, projector_type="identity")
    assert str(err.value) == (
        "projector_type 'identity' needs visual tokens as wide as the LM (64), got 32; set split fusion_dim=64 or use 'mlp2x_gelu'."
    )
    with pytest.raises(ValueError, match=r"^Unknown projector_type 'mlp2x_relu'\. Known: linear, mlp\{N\}x_gelu, identity\.$"):
        _build(tiny_ckpts, projector_type="mlp2x_relu")


def test_image_token_id_outside_vocab(tiny_ckpts):
    # (A tokenizer without <image> is prepared instead of refused: tests/test_model_tokenizer.py.)
    with pytest.raises(ValueError) as err:
        _build(tiny_ckpts, image_token_id=5000)
    assert str(err.value) == (
        "image_token_id=5000 is outside the LM vocabulary (size 1002); add the <image> token to the tokenizer, "
        "resize the LM's embeddings, and pass its id."
    )


def test_tiny_lm_weights_are_initialised_at_one_over_sqrt_width(tiny_ckpts):
    """Llama's 0.02 is sized for thousands-wide models; the tiny LMs use 1/sqrt(width) (see `lm_initializer_range`),
    in the saved config and in the saved weights themselves."""
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_ckpts["llama"])
    assert config.initializer_range == pytest.approx(config.hidden_size**-0.5)
    lm = LlamaForCausalLM.from_pretrained(tiny_ckpts["llama"])
    for weight in (lm.model.layers[0].self_attn.q_proj.weight, lm.model.layers[0].mlp.up_proj.weight, lm.lm_head.weight):
        assert weight.std().item() == pytest.approx(config.hidden_size**-0.5, rel=0.1)
