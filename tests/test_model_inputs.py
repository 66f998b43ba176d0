"""Mismatched model inputs: each is either correct behaviour or a clear error."""
import pytest
import torch

from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
from vitsplit_vlm.vision import split_preset

K = 4


@pytest.fixture(scope="module")
def model(tiny_ckpts):
    return VitSplitLlavaForConditionalGeneration.from_components(
        tiny_ckpts["clip"], tiny_ckpts["llama"], split_preset("clip-l-vlm")
    ).eval()


def _message(found: int, images: int) -> str:
    return (
        f"input_ids hold {found} image tokens (id 1001) but {images} image(s) x 4 tokens = {images * K} are needed. "
        "Put '<image>' in the text once per image and let VitSplitLlavaProcessor expand it to 4 tokens; a truncated "
        "prompt may have cut image tokens (raise max_length)."
    )


@pytest.mark.parametrize(
    "image_runs, extra_tokens, num_images, found",
    [
        (2, 0, 1, 8),  # more <image> tokens than images
        (0, 0, 1, 0),  # an image with no token
        (1, 0, 0, 4),  # image tokens but no pixel_values
        (1, -1, 1, 3),  # an image run cut short (truncation)
    ],
)
def test_image_token_count_mismatch_is_a_clear_error(model, image_runs, extra_tokens, num_images, found):
    img = model.config.image_token_id
    ids = torch.tensor([[1, *[img] * (K * image_runs + extra_tokens), 5, 6]])
    pixels = torch.randn(num_images, 3, 28, 28) if num_images else None
    with pytest.raises(ValueError) as err:
        model(ids, pixels)
    assert str(err.value) == _message(found, num_images)


def test_text_only_batch_is_the_plain_lm(model):
    ids = torch.tensor([[0, 1, 5, 6, 7], [1, 8, 9, 10, 11]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        lm = model.language_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, lm, rtol=0, atol=0)


def test_images_land_in_order_at_their_tokens(model):
    """Two images in one row and one in the next: each run gets its own image's projected tokens."""
    img = model.config.image_token_id
    ids = torch.tensor([[1, *[img] * K, 5, *[img] * K], [1, 6, 7, 8, *[img] * K, 9, 10]])
    pixels = torch.randn(3, 3, 28, 28)
    seen = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(ids, pixels)
        features = model.get_image_features(pixels)
    hook.remove()
    embeds = seen[0]
    torch.testing.assert_close(embeds[0, 1:5], features[0])
    torch.testing.assert_close(embeds[0, 6:10], features[1])
    torch.testing.assert_close(embeds[1, 4:8], features[2])
    torch.testing.assert_close(embeds[1, :4], model.get_input_embeddings()(ids[1, :4]))


def test_pixels_need_input_ids(model):
    embeds = model.get_input_embeddings()(torch.tensor([[1, 5]]))
    with pytest.raises(ValueError, match=r"^pixel_values need input_ids to find the <image> tokens; pass input_ids, not inputs_embeds\.$"):
        model(inputs_embeds=embeds, pixel_values=torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"^Pass exactly one of input_ids or inputs_embeds\.$"):
        model()


def test_any_image_size_gives_its_own_token_count(model):
    """pixel_values of another size (e.g. a processor configured for 42 px) need ceil(H/14) x ceil(W/14) tokens."""
    img = model.config.image_token_id
    ids = torch.tensor([[1, *[img] * 9, 5]])
    assert model(ids, torch.randn(1, 3, 42, 40)).logits.shape == (1, 11, 1002)
