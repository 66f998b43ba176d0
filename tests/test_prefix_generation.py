"""Prefix-shared generation equals per-question generation: same greedy tokens, first-step logits within 1e-5.

The oracle is the model's own `generate` on one unpadded prompt at a time (LLaVA's evaluation loop), built by the
processor's `apply_chat_template`, independent of the prefix planning and cache gathering under test.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from vitsplit_vlm.eval.cli import with_instruction
from vitsplit_vlm.eval.generation import image_prompt_messages
from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor
from vitsplit_vlm.models.generation import generate_greedy, generate_replies, image_groups, plan_batches

INSTRUCTION = "Answer the question using a single word or phrase."
# Different lengths, and prompts that share words after the image (so the common prefix reaches into the question).
QUESTIONS = [
    "what colour is the circle",
    "how many objects are there in the picture on the left side of the image",
    "is there a red square",
    "is there a blue star",
    "what shape is at the top",
    "yes",
    "which object is the big one in the middle of the picture",
]
# image index per question: 4 images, 1 to 3 questions each, interleaved.
IMAGE_OF = [0, 1, 0, 2, 1, 3, 0]
MAX_NEW = 6


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    model = VitSplitLlavaForConditionalGeneration.from_pretrained(tiny_vlm_dir, dtype=torch.float32).eval()
    return model, VitSplitLlavaProcessor.from_pretrained(tiny_vlm_dir)


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 40, 3), dtype=np.uint8)) for i in range(n)]


def _one_at_a_time(model, processor, images, conversations, template):
    tokens, logits = [], []
    for image, conversation in zip(images, conversations):
        inputs = processor.apply_chat_template([conversation], template=template, tokenize=True, images=[image])
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, return_dict_in_generate=True,
                                 output_logits=True, pad_token_id=processor.tokenizer.pad_token_id)
        tokens.append(out.sequences[0, inputs["input_ids"].shape[1]:])
        logits.append(out.logits[0][0])
    return tokens, logits


def _assert_same(got, tokens, logits):
    for i, (t, lg) in enumerate(zip(tokens, logits)):
        assert got.tokens[i].tolist() == t.tolist(), f"prompt {i}"
        torch.testing.assert_close(got.first_logits[i], lg, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def vqa_set(vlm):
    """4 images with 1 to 3 questions each, interleaved, and the one-at-a-time answers to them."""
    pictures = _images(4)
    images = [pictures[i].copy() for i in IMAGE_OF]  # distinct objects: images are matched by content
    conversations = [image_prompt_messages(with_instruction(q, INSTRUCTION)) for q in QUESTIONS]
    return images, conversations, _one_at_a_time(*vlm, images, conversations, "vicuna_v1")


def test_answers_depend_on_the_image(vqa_set):
    """Else a row decoded from another image's prefix would go unnoticed."""
    _, logits = vqa_set[2]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)


@pytest.mark.parametrize("batch_size", [2, 16])
def test_shared_prefix_equals_one_question_at_a_time(vlm, vqa_set, batch_size):
    """batch_size 2: image 0's three questions are decoded in pieces from one prefill; 16: all four images, with
    questions of different lengths, in one batch."""
    model, processor = vlm
    images, conversations, (tokens, logits) = vqa_set
    got = generate_greedy(model, processor, images, conversations, template="vicuna_v1", max_new_tokens=MAX_NEW,
                          batch_size=batch_size, first_logits=True)
    _assert_same(got, tokens, logits)
    padded = generate_greedy(model, processor, images, conversations, template="vicuna_v1", max_new_tokens=MAX_NEW,
                             batch_size=batch_size, share_prefix=False, first_logits=True)
    _assert_same(padded, tokens, logits)


def test_the_vision_module_runs_once_per_image(vlm):
    model, processor = vlm
    pictures = _images(4)
    seen = []
    handle = model.vision.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    try:
        generate_replies(model, processor, [pictures[i] for i in IMAGE_OF], [image_prompt_messages(q) for q in QUESTIONS],
                         max_new_tokens=2, batch_size=2)
    finally:
        handle.remove()
    assert sum(seen) == 4


def test_prompts_without_a_shareable_prefix_take_the_padded_path(vlm):
    """The plain template's prompt ends with the image tokens: nothing is left to feed after a shared prefix."""
    model, processor = vlm
    pictures = _images(2)
    images = [pictures[0], pictures[1], pictures[0]]
    conversations = [image_prompt_messages(with_instruction(q, INSTRUCTION)) for q in QUESTIONS[:3]]
    tokens, logits = _one_at_a_time(model, processor, images, conversations, "plain")
    got = generate_greedy(model, processor, images, conversations, template="plain", max_new_tokens=MAX_NEW,
                          batch_size=2, first_logits=True)
    _assert_same(got, tokens, logits)


def test_one_image_per_conversation_is_required(vlm):
    model, processor = vlm
    with pytest.raises(ValueError, match="1 images for 2 conversations: pass one image per conversation"):
        generate_replies(model, processor, _images(1), [image_prompt_messages("a")] * 2)


IMG = 9  # image-token id in the planning tests


def test_plan_keeps_images_whole_and_buckets_by_length():
    prompts = [
        [1, IMG, IMG, 5, 6, 7, 8],        # image 0, long
        [1, IMG, IMG, 5, 6],              # image 1
        [1, IMG, IMG, 5, 7, 7],           # image 0
        [1, IMG, IMG, 5],                 # image 2, shortest
        [1, IMG, IMG, 5, 6, 2],           # image 1
    ]
    plan = plan_batches(prompts, [0, 1, 0, 2, 1], IMG, batch_size=3)
    assert plan.padded == []
    # images ordered by their longest prompt (2: 4, 1: 6, 0: 7); whole images per batch, within batch_size.
    assert [(b.images, b.rows) for b in plan.shared] == [([2, 1], [3, 1, 4]), ([0], [2, 0])]
    # the common ids, but at least one token of its own left to every prompt
    assert [b.prefix_len for b in plan.shared] == [3, 4]


def test_plan_shares_across_images_up_to_the_common_ids():
    prompts = [[1, IMG, 5, 6, 7], [1, IMG, 5, 6, 8, 8], [1, IMG, 5, 4]]
    plan = plan_batches(prompts, [0, 1, 1], IMG, batch_size=8)
    assert [(b.images, b.rows, b.prefix_len) for b in plan.shared] == [([0, 1], [0, 2, 1], 3)]


def test_plan_separates_templates_and_sends_unshareable_prompts_to_padding():
    prompts = [
        [1, IMG, 5],          # image then question
        [1, 5, IMG, 6],       # question then image: another family, never one prefix with the first
        [1, IMG],             # the image ends the prompt
        [1, 5, 6],            # no image
    ]
    plan = plan_batches(prompts, [0, 0, 0, 0], IMG, batch_size=8)
    assert sorted((b.rows, b.prefix_len) for b in plan.shared) == [([0], 2), ([1], 3)]
    assert plan.padded == [2, 3]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        plan_batches(prompts, [0, 0, 0, 0], IMG, batch_size=0)


def test_image_groups_match_by_content():
    a, b = _images(2)
    distinct, index = image_groups([a, b, a.copy(), a.convert("L"), b])
    assert index == [0, 1, 0, 2, 1] and len(distinct) == 3
