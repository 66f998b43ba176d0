"""The processor against the tokenizer, the image processor and `conversation` called directly."""
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

from vitsplit_vlm.conversation import encode_prompt, render_prompt
from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor
from vitsplit_vlm.vision import split_preset

K = 4


def _pixels(tiny_ckpts, *images) -> torch.Tensor:
    return AutoImageProcessor.from_pretrained(tiny_ckpts["clip"])(images=list(images), return_tensors="pt")["pixel_values"]


def _image(seed: int, size=(40, 30)) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8).numpy())


def test_one_image_expands_to_num_image_tokens(tiny_processor, tiny_tokenizer, tiny_ckpts):
    image = _image(0)
    out = tiny_processor(text="<image>\nwhat colour is it?", images=image)
    img = tiny_tokenizer.convert_tokens_to_ids("<image>")
    # as LLaVA's tokenizer_image_token: the text after <image> is tokenised on its own (it starts a word)
    plain = [tiny_tokenizer.bos_token_id, img] + tiny_tokenizer("\nwhat colour is it?", add_special_tokens=False)["input_ids"]
    at = 1
    assert out["input_ids"][0].tolist() == plain[:at] + [img] * K + plain[at + 1:]
    assert out["attention_mask"].tolist() == [[1] * (len(plain) + K - 1)]
    torch.testing.assert_close(out["pixel_values"], _pixels(tiny_ckpts, image), rtol=0, atol=0)
    assert tiny_processor.num_image_tokens == K == tiny_processor.image_size[0] // 14 * (tiny_processor.image_size[1] // 14)


def test_batch_is_left_padded_with_images_in_text_order(tiny_processor, tiny_tokenizer, tiny_ckpts):
    images = [_image(1), _image(2), _image(3)]
    texts = ["<image> and <image> which is bigger?", "hi", "<image>"]
    out = tiny_processor(text=texts, images=[images[:2], [], images[2:]])  # one list per sample, as a collator has them
    rows = [tiny_tokenizer(t)["input_ids"] for t in texts]
    lengths = [len(r) + r.count(tiny_processor.image_token_id) * (K - 1) for r in rows]
    width = max(lengths)
    assert out["input_ids"].shape == (3, width)
    assert out["attention_mask"].tolist() == [[0] * (width - n) + [1] * n for n in lengths]
    assert (out["input_ids"][out["attention_mask"] == 0] == tiny_tokenizer.pad_token_id).all()
    assert (out["input_ids"] == tiny_processor.image_token_id).sum() == 3 * K
    torch.testing.assert_close(out["pixel_values"], _pixels(tiny_ckpts, *images), rtol=0, atol=0)
    right = tiny_processor(text=texts, images=images, padding_side="right")
    assert right["attention_mask"].tolist() == [[1] * n + [0] * (width - n) for n in lengths]


def test_text_only_batch_has_no_pixel_values(tiny_processor, tiny_tokenizer):
    out = tiny_processor(text=["a red circle", "two"])
    assert "pixel_values" not in out
    assert out["input_ids"][1, -1].item() == tiny_tokenizer("two")["input_ids"][-1]


@pytest.mark.parametrize(
    "text, num_images, message",
    [
        ("<image> <image> compare", 1, "The text has 2 '<image>' placeholder(s) but 1 image(s) were given"),
        ("what is this?", 1, "The text has 0 '<image>' placeholder(s) but 1 image(s) were given"),
        ("<image> what is this?", 0, "The text has 1 '<image>' placeholder(s) but 0 image(s) were given"),
    ],
)
def test_placeholder_count_mismatch_is_a_clear_error(tiny_processor, text, num_images, message):
    with pytest.raises(ValueError) as err:
        tiny_processor(text=text, images=[_image(i) for i in range(num_images)] or None)
    assert str(err.value) == (
        f"{message}; put '<image>' in the text exactly once per image, in the order the images are passed."
    )


def test_truncation_never_cuts_image_tokens(tiny_processor, tiny_tokenizer):
    text = "a b c d e f <image>"
    n = len(tiny_tokenizer(text)["input_ids"]) + K - 1
    with pytest.raises(ValueError) as err:
        tiny_processor(text=text, images=_image(0), truncation=True, max_length=n - 2)
    assert str(err.value) == (
        f"Truncating sample 0 ({n} tokens) to max_length={n - 2} would cut its image tokens (2 of 4 kept); "
        "raise max_length or shorten the text."
    )
    kept = tiny_processor(text="<image> a b c d e f g h", images=_image(0), truncation=True, max_length=K + 3)
    assert kept["input_ids"].shape == (1, K + 3) and (kept["input_ids"] == tiny_processor.image_token_id).sum() == K


def test_any_mode_and_size_becomes_rgb(tiny_processor, tiny_ckpts):
    white = Image.new("RGB", (30, 30), (255, 255, 255))
    transparent = Image.new("RGBA", (30, 30), (255, 0, 0, 0))
    gray = Image.new("L", (30, 20), 77)
    palette = Image.new("P", (30, 30), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.info["transparency"] = 0
    tiny = Image.new("RGB", (1, 1), (10, 200, 30))
    out = tiny_processor(text=["<image>"] * 5, images=[transparent, palette, gray, tiny, Image.new("LA", (3, 1))])
    assert out["pixel_values"].shape == (5, 3, 28, 28)
    reference = _pixels(tiny_ckpts, white, white, Image.new("RGB", (30, 20), (77, 77, 77)), tiny)
    torch.testing.assert_close(out["pixel_values"][:4], reference, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"^image 0 is a Tensor, not a PIL image; open it with PIL\.Image\.open\.$"):
        tiny_processor(text="<image>", images=[torch.zeros(3, 8, 8)])


def test_pad_to_square_keeps_the_whole_image(tiny_ckpts):
    processor = VitSplitLlavaProcessor.from_components(tiny_ckpts["clip"], tiny_ckpts["llama"], pad_to_square=True)
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    fill = tuple(round(255 * m) for m in processor.image_processor.image_mean)
    square = Image.new("RGB", (60, 60), fill)
    square.paste(wide, (0, 20))
    torch.testing.assert_close(processor.preprocess_images([wide]), _pixels(tiny_ckpts, square), rtol=0, atol=0)


def test_chat_templates_come_from_conversation(tiny_processor, tiny_tokenizer):
    messages = [{"role": "user", "content": "<image>\nwhat shape is it?"}]
    for template in ("plain", "vicuna_v1"):
        assert tiny_processor.apply_chat_template(messages, template=template) == render_prompt(
            messages, tiny_tokenizer, template)
    out = tiny_processor.apply_chat_template([messages, messages], template="vicuna_v1", tokenize=True,
                                             images=[_image(0), _image(1)])
    ids = encode_prompt(messages, tiny_tokenizer, "vicuna_v1")
    at = ids.index(tiny_processor.image_token_id)
    assert out["input_ids"][0].tolist() == ids[:at] + [tiny_processor.image_token_id] * K + ids[at + 1:]
    assert out["pixel_values"].shape == (2, 3, 28, 28)


def test_tokenizer_chat_template_gets_a_single_bos(tiny_ckpts, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpts["llama"])
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    processor = VitSplitLlavaProcessor(AutoImageProcessor.from_pretrained(tiny_ckpts["clip"]), tokenizer)
    messages = [{"role": "user", "content": "hello"}]
    assert processor.apply_chat_template(messages, template="chat_template") == "<s>user: hello\nassistant:"
    ids = processor.apply_chat_template(messages, template="chat_template", tokenize=True)["input_ids"][0].tolist()
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_save_load_through_auto_processor(tiny_processor, tmp_path):
    custom = VitSplitLlavaProcessor(tiny_processor.image_processor, tiny_processor.tokenizer, patch_size=14,
                                    floor_grid=True, pad_to_square=True, padding_side="right")
    custom.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, VitSplitLlavaProcessor)
    assert (loaded.patch_size, loaded.floor_grid, loaded.pad_to_square, loaded.padding_side) == (14, True, True, "right")
    assert loaded.image_token_id == tiny_processor.image_token_id and loaded.image_size == (28, 28)
    image = _image(5, (50, 20))
    a, b = custom(text="<image> hi", images=image), loaded(text="<image> hi", images=image)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("tower", ["clip", "dinov2", "siglip"])
def test_processor_feeds_the_model(tiny_ckpts, tower):
    processor = VitSplitLlavaProcessor.from_components(tiny_ckpts[tower], tiny_ckpts["llama"])
    split = split_preset("clip-l-vlm") if tower == "clip" else split_preset("llava-baseline")
    model = VitSplitLlavaForConditionalGeneration.from_components(tiny_ckpts[tower], tiny_ckpts["llama"], split).eval()
    assert processor.num_image_tokens == model.num_image_tokens
    inputs = processor(text=["<image> what is it?", "hello there"], images=[_image(7)])
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 2)


def test_image_processor_without_a_fixed_output_size_is_a_clear_error(tiny_processor):
    import copy

    processor = copy.deepcopy(tiny_processor)
    processor.image_processor.do_center_crop = False
    processor.image_processor.size = {"shortest_edge": 28}
    with pytest.raises(ValueError, match=r"resizes to \{'shortest_edge': 28\} without a centre crop, so processed images have no fixed size"):
        processor.num_image_tokens
