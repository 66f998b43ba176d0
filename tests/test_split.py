"""The split module against the towers' own Hugging Face forward passes."""
import pytest
import torch
from transformers import AutoModel

from vitsplit_vlm.vision import FeaturePyramid, ViTSplit, ViTSplitConfig, load_tower, split_preset
from vitsplit_vlm.vision.towers import vision_config_of

FAMILIES = ["dinov2", "dinov2_reg", "clip", "siglip"]
PREFIX = {"dinov2": 1, "dinov2_reg": 5, "clip": 1, "siglip": 0}


def _split(tiny_ckpts, family, **overrides) -> ViTSplit:
    cfg = dict(task_layers=2, prior_layers=[1, 3])
    cfg.update(overrides)
    return ViTSplit(load_tower(tiny_ckpts[family]), ViTSplitConfig(**cfg))


def _reference(tiny_ckpts, family, pixels, feature_layer=-1):
    """Patch features straight from Hugging Face: last_hidden_state, or hidden_states[k] for an inner layer."""
    model = AutoModel.from_pretrained(tiny_ckpts[family]).eval()
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    feats = out.last_hidden_state if feature_layer == -1 else out.hidden_states[feature_layer]
    return feats[:, PREFIX[family]:], out.hidden_states


def _as_tokens(feature_map):
    return feature_map.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_task_branch_reproduces_tower_features_at_init(tiny_ckpts, family):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 28, 28)
    split = _split(tiny_ckpts, family)
    out = split(pixels)
    ref, _ = _reference(tiny_ckpts, family, pixels)
    assert out.task_map.shape == (2, 32, 2, 2)
    torch.testing.assert_close(_as_tokens(out.task_map), ref, atol=1e-5, rtol=0)


def test_clip_penultimate_feature_layer_matches_llava_selection(tiny_ckpts):
    pixels = torch.randn(1, 3, 28, 28)
    split = _split(tiny_ckpts, "clip", feature_layer=-2, task_layers=1, prior_layers=[-2])
    ref, _ = _reference(tiny_ckpts, "clip", pixels, feature_layer=-2)
    torch.testing.assert_close(_as_tokens(split(pixels).task_map), ref, atol=1e-5, rtol=0)
    assert split.num_blocks == 3 and split.split_index == 2 and split.prior_indices == [2]


@pytest.mark.parametrize("family", ["dinov2_reg", "siglip"])
def test_prior_head_reads_normed_frozen_layers(tiny_ckpts, family):
    pixels = torch.randn(2, 3, 28, 28)
    split = _split(tiny_ckpts, family)
    seen = []
    split.prior_head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    split(pixels)
    model = AutoModel.from_pretrained(tiny_ckpts[family]).eval()
    norm = model.layernorm if family == "dinov2_reg" else model.post_layernorm
    with torch.no_grad():
        hs = model(pixels, output_hidden_states=True).hidden_states
        expected = torch.cat([norm(hs[i + 1])[:, PREFIX[family]:] for i in (1, 3)], dim=-1)
    torch.testing.assert_close(_as_tokens(seen[0]), expected, atol=1e-5, rtol=0)


def test_baseline_mode_is_the_frozen_feature_layer(tiny_ckpts):
    pixels = torch.randn(2, 3, 28, 28)
    split = ViTSplit(load_tower(tiny_ckpts["clip"]), split_preset("llava-baseline"))
    ref, _ = _reference(tiny_ckpts, "clip", pixels, feature_layer=-2)
    out = split(pixels)
    torch.testing.assert_close(out.tokens, ref, atol=1e-6, rtol=0)
    assert out.task_map is None and not any(p.requires_grad for p in split.parameters())


def test_no_gradient_or_graph_before_the_split_point(tiny_ckpts):
    split = _split(tiny_ckpts, "dinov2", prior_layers=[0, 1]).train()
    grad_mode_in_frozen_blocks = []
    for block in split.tower.encoder.layer:
        block.register_forward_hook(lambda m, a, o: grad_mode_in_frozen_blocks.append(torch.is_grad_enabled()))
    task_inputs = []
    split.task_blocks[0].register_forward_pre_hook(lambda m, args: task_inputs.append(args[0]))
    out = split(torch.randn(2, 3, 28, 28))
    out.tokens.square().mean().backward()
    assert grad_mode_in_frozen_blocks == [False, False]  # blocks 2, 3 never run frozen: the task head replaces them
    assert task_inputs[0].grad_fn is None and not task_inputs[0].requires_grad
    assert all(p.grad is None and not p.requires_grad for p in split.tower.parameters())
    trainable = [n for n, p in split.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in split.parameters() if p.requires_grad)
    assert not split.tower.training and split.task_blocks.training


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_parameter_count_matches_formula(tiny_ckpts, family):
    split = _split(tiny_ckpts, family, task_layers=3, prior_layers=[0, 1, 2])
    tower = split.tower
    d, k_p = 32, 3
    blocks = tower.encoder.layer if "dinov2" in family else tower.encoder.layers
    block_params = sum(p.numel() for p in blocks[-1].parameters())
    norm_params = 0 if family == "clip" else 2 * d
    conv_block = lambda cin, cout: cin * cout + cout + 9 * cout * cout + cout  # 1x1 conv + 3x3 conv, with biases
    expected = 3 * block_params + norm_params + conv_block(k_p * d, d) + conv_block(2 * d, d)
    assert sum(p.numel() for p in split.parameters() if p.requires_grad) == expected


def test_any_image_size_is_padded_to_whole_patches(tiny_ckpts):
    split = _split(tiny_ckpts, "dinov2")
    out = split(torch.randn(1, 3, 30, 43))
    assert out.feature_map.shape == (1, 32, 3, 4) and out.tokens.shape == (1, 12, 32)
    assert split.num_tokens() == 4 and split.num_tokens(30, 43) == 12


@pytest.mark.parametrize("size", [(32, 32), (30, 43)])  # native but not whole patches (as 384 / 14), and another
def test_siglip_drops_partial_patches_as_the_tower_does(tmp_path, size):
    """SigLIP so400m/14 at 384 px is a 27 x 27 grid: its patch conv floors. A tiny SigLIP whose native 32 px is not a
    multiple of its 14 px patch: the split's token count and frozen features are the tower's own output."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                                image_size=32, patch_size=14)
    tower = SiglipVisionModel(config).eval()
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = tower(pixels, interpolate_pos_encoding=size != (32, 32)).last_hidden_state  # post_layernorm applied
    split = ViTSplit(tower, ViTSplitConfig(task_layers=2, prior_layers=[1, 3]))
    baseline = ViTSplit(tower, ViTSplitConfig(use_split=False))  # plain LLaVA features at the last layer
    grid = (size[0] // 14, size[1] // 14)
    assert split.grid_size(*size) == grid and split.num_tokens(*size) == ref.shape[1] == grid[0] * grid[1]
    assert split.num_tokens() == 4  # the native 32 px: 2 x 2, as the tower's 4 position embeddings
    out = split(pixels)
    assert out.tokens.shape == (2, grid[0] * grid[1], 32)
    torch.testing.assert_close(_as_tokens(out.task_map), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(baseline(pixels).tokens, ref, atol=1e-5, rtol=0)


def test_pyramid_levels(tiny_ckpts):
    out = _split(tiny_ckpts, "dinov2")(torch.randn(1, 3, 56, 56))
    levels = FeaturePyramid(32)(out.feature_map)
    assert [tuple(l.shape[-2:]) for l in levels] == [(16, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(task_layers=5), "task_layers=5 must be between 1 and the 4 blocks up to feature_layer=-1; lower task_layers or raise feature_layer."),
        (dict(task_layers=0), "task_layers=0 must be between 1 and the 4 blocks up to feature_layer=-1; lower task_layers or raise feature_layer."),
        (dict(prior_layers=[1, 4]), "prior layer 4 is out of range for a tower with 4 blocks (valid: -4..3)."),
        (dict(prior_layers=[]), "prior_layers is empty: give at least one frozen block index for the prior head."),
        (dict(feature_layer=-2, prior_layers=[3]), "prior layer 3 lies after feature_layer=2; prior layers must be at or before the feature layer."),
        (dict(feature_layer=7), "feature_layer 7 is out of range for a tower with 4 blocks (valid: -4..3)."),
    ],
)
def test_bad_split_config_is_a_clear_error(tiny_ckpts, overrides, message):
    with pytest.raises(ValueError) as err:
        _split(tiny_ckpts, "dinov2", **overrides)
    assert str(err.value) == message


def test_unknown_tower_type_is_a_clear_error(tiny_ckpts):
    config = AutoModel.from_pretrained(tiny_ckpts["llama"]).config
    with pytest.raises(ValueError, match=r"^Unsupported vision tower type 'llama'\. Supported: clip_vision_model, dinov2, "):
        vision_config_of(config)
    with pytest.raises(ValueError, match=r"^Unknown split preset 'dinov3'\. Known presets: "):
        split_preset("dinov3")


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_full_clip_and_siglip_checkpoints_load_as_their_vision_tower(tmp_path, family):
    """openai/clip-vit-large-patch14-336 (what LLaVA-1.5 uses) is a full text+vision checkpoint."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=28, patch_size=14)
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
    model_cls, config_cls = (CLIPModel, CLIPConfig) if family == "clip" else (SiglipModel, SiglipConfig)
    full = model_cls(config_cls(vision_config=vision, text_config=text)).eval()
    full.save_pretrained(tmp_path)
    tower = load_tower(tmp_path)
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(tower(pixels).last_hidden_state, full.vision_model(pixels).last_hidden_state, atol=0, rtol=0)
    assert vision_config_of(tower.config).model_type == f"{family}_vision_model"
