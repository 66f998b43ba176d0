"""Generation: KV cache vs full recompute, and batched left-padded prompts vs one prompt at a time."""
import pytest
import torch

from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
from vitsplit_vlm.vision import split_preset

K = 4
NEW = 6


@pytest.fixture(scope="module")
def model(tiny_ckpts):
    torch.manual_seed(0)
    return VitSplitLlavaForConditionalGeneration.from_components(
        tiny_ckpts["clip"], tiny_ckpts["llama"], split_preset("clip-l-vlm")
    ).eval()


def _generate(model, ids, mask, pixels, **kwargs):
    out = model.generate(
        ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=NEW, do_sample=False,
        return_dict_in_generate=True, output_scores=True, **kwargs,
    )
    return out.sequences[:, ids.shape[1]:], torch.stack(out.scores, dim=1)  # new tokens, B x steps x vocab


def _cases(model):
    img = model.config.image_token_id
    torch.manual_seed(1)
    return [  # (prompt ids, pixel_values or None): two images, one image, text only, with different lengths
        ([1, 5, *[img] * K, 6, *[img] * K, 7, 8], torch.randn(2, 3, 28, 28)),
        ([1, *[img] * K, 9, 10, 11, 12, 13, 14, 15, 16], torch.randn(1, 3, 28, 28)),
        ([1, 20, 21], None),
    ]


def test_cache_equals_full_recompute(model):
    for prompt, pixels in _cases(model):
        ids = torch.tensor([prompt])
        cached = _generate(model, ids, torch.ones_like(ids), pixels)
        uncached = _generate(model, ids, torch.ones_like(ids), pixels, use_cache=False)
        assert cached[0].tolist() == uncached[0].tolist()
        torch.testing.assert_close(cached[1], uncached[1], atol=1e-5, rtol=0)


def test_batched_left_padded_generation_equals_one_by_one(model):
    cases = _cases(model)
    singles = [_generate(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), px) for p, px in cases]
    length = max(len(p) for p, _ in cases)
    pad = model.generation_config.pad_token_id
    ids = torch.tensor([[pad] * (length - len(p)) + p for p, _ in cases])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p, _ in cases])
    pixels = torch.cat([px for _, px in cases if px is not None])
    tokens, scores = _generate(model, ids, mask, pixels)
    for row, (single_tokens, single_scores) in enumerate(singles):
        steps = single_tokens.shape[1]  # a prompt that hits eos early stops early on its own
        assert tokens[row, :steps].tolist() == single_tokens[0].tolist()
        torch.testing.assert_close(scores[row, :steps], single_scores[0], atol=1e-4, rtol=0)
    assert len({tuple(t.tolist()) for t in tokens}) == len(cases)  # the prompts really lead to different answers
