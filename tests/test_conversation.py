import copy

import pytest

from vitsplit_vlm.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    VICUNA_SYSTEM,
    ConversationError,
    encode_prompt,
    expand_image_tokens,
    messages_from_llava,
    render_prompt,
    tokenize_conversation,
)

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
LLAVA = [
    {"from": "human", "value": "<image>\nWhat color is the circle?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "How many shapes are there?"},
    {"from": "gpt", "value": "two shapes"},
]
ANSWERS = ["red", "two shapes"]


@pytest.fixture(scope="module")
def chat_tok(tiny_tokenizer):
    t = copy.deepcopy(tiny_tokenizer)
    t.chat_template = CHATML
    return t


def pieces(t, text):
    """The text on each side of <image> tokenised on its own, <image> as its one id (no special tokens added)."""
    ids = []
    for k, piece in enumerate(text.split(IMAGE_TOKEN)):
        ids += ([t.convert_tokens_to_ids(IMAGE_TOKEN)] if k else []) + t(piece, add_special_tokens=False)["input_ids"]
    return ids


def learned_runs(ids, labels):
    """Contiguous runs of unmasked labels, checking the label equals the input id there."""
    runs, cur = [], []
    for i, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert label == i
            cur.append(label)
    return runs + ([cur] if cur else [])


def test_vicuna_v1_prompt_is_llava_conv_vicuna_v1(tiny_tokenizer):
    messages = messages_from_llava(LLAVA)
    assert render_prompt(messages[:3], tiny_tokenizer, "vicuna_v1") == (
        VICUNA_SYSTEM + " USER: <image>\nWhat color is the circle? ASSISTANT: red</s>"
        "USER: How many shapes are there? ASSISTANT:"
    )
    assert VICUNA_SYSTEM == (  # conv_vicuna_v1's wording (LLaVA c121f04), not conv_llava_v1's "curious human"
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )


@pytest.mark.parametrize("template", ["vicuna_v1", "chat_template"])
def test_only_answers_and_eos_are_learned(template, tiny_tokenizer, chat_tok):
    t = chat_tok if template == "chat_template" else tiny_tokenizer
    messages = messages_from_llava(LLAVA)
    out = tokenize_conversation(messages, t, template)
    runs = learned_runs(out.input_ids, out.labels)
    assert [t.decode(r).strip() for r in runs] == [a + "</s>" for a in ANSWERS]
    assert all(r[-1] == t.eos_token_id for r in runs)
    assert not out.truncated
    # the ids are the rendered conversation's, each side of <image> tokenised on its own, as at inference
    if template == "vicuna_v1":
        expected = [t.bos_token_id] + pieces(t, VICUNA_SYSTEM + " USER: <image>\nWhat color is the circle? ASSISTANT: "
                                             "red</s>USER: How many shapes are there? ASSISTANT: two shapes</s>")
    else:
        expected = pieces(t, t.apply_chat_template(messages, tokenize=False))
    assert out.input_ids == expected
    assert out.input_ids.count(t.convert_tokens_to_ids(IMAGE_TOKEN)) == 1


def test_plain_keeps_image_and_answer_only(tiny_tokenizer):
    messages = messages_from_llava(LLAVA[:2])
    out = tokenize_conversation(messages, tiny_tokenizer, "plain")
    image_id = tiny_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    answer = tiny_tokenizer("red</s>", add_special_tokens=False)["input_ids"]
    assert out.input_ids == [tiny_tokenizer.bos_token_id, image_id] + answer  # the caption starts a word: "▁red"
    assert tiny_tokenizer.decode(out.input_ids[2:]) == "red</s>"
    assert out.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX] and out.labels[2:] == out.input_ids[2:]
    assert len(out.labels[2:]) == len(answer)
    assert render_prompt(messages[:1], tiny_tokenizer, "plain") == IMAGE_TOKEN
    with pytest.raises(ConversationError, match=r"^the plain template takes one user turn and one assistant turn, got 4 turns$"):
        tokenize_conversation(messages_from_llava(LLAVA), tiny_tokenizer, "plain")


@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "chat_template"])
def test_inference_prompt_ids_are_the_training_prefix(template, tiny_tokenizer, chat_tok):
    t = chat_tok if template == "chat_template" else tiny_tokenizer
    messages = messages_from_llava(LLAVA[:2])
    out = tokenize_conversation(messages, t, template)
    first_learned = next(i for i, label in enumerate(out.labels) if label != IGNORE_INDEX)
    assert encode_prompt(messages[:1], t, template) == out.input_ids[:first_learned]


def test_chat_template_prompt_uses_the_tokenizers_template(chat_tok, tiny_tokenizer):
    messages = messages_from_llava(LLAVA[:2])[:1]
    assert render_prompt(messages, chat_tok, "chat_template") == chat_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ConversationError, match="^template 'chat_template' needs a tokenizer with a chat_template; use 'vicuna_v1' or 'plain'$"):
        render_prompt(messages, tiny_tokenizer, "chat_template")


def test_boundary_merging_tokenizer_is_refused(tiny_tokenizer):
    t = copy.deepcopy(tiny_tokenizer)
    # "Q A" + "nswer" renders "Q Answer": the tokenizer merges across the user/assistant boundary.
    t.chat_template = "{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'user' %} A{% endif %}{% endfor %}"
    with pytest.raises(ConversationError, match="merges text across a turn boundary of template 'chat_template'"):
        tokenize_conversation([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "nswer"}], t, "chat_template")


@pytest.mark.parametrize("turns, message", [
    ([], "'conversations' must be a non-empty list of {from, value} turns"),
    ("hello", "'conversations' must be a non-empty list of {from, value} turns"),
    ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}],
     "bad roles ['gpt', 'human']: expected alternating human/gpt turns starting with human and ending with gpt"),
    ([{"from": "human", "value": "q"}],
     "bad roles ['human']: expected alternating human/gpt turns starting with human and ending with gpt"),
    ([{"from": "human", "value": "q"}, {"from": "user", "value": "a"}],
     "bad roles ['human', 'user']: expected alternating human/gpt turns starting with human and ending with gpt"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "empty answer in turn 1"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}], "turn 0 (human): 'value' must be a string, got int"),
])
def test_llava_turns_are_checked(turns, message):
    with pytest.raises(ConversationError) as err:
        messages_from_llava(turns)
    assert str(err.value) == message


def test_generation_needs_a_history_ending_with_user(tiny_tokenizer):
    with pytest.raises(ConversationError, match=r"^bad roles \['user', 'assistant'\]: .* ending with user$"):
        render_prompt(messages_from_llava(LLAVA[:2]), tiny_tokenizer, "vicuna_v1")
    with pytest.raises(ValueError, match="unknown conversation template 'llama_2'"):
        render_prompt(messages_from_llava(LLAVA[:2])[:1], tiny_tokenizer, "llama_2")


def test_expand_image_tokens():
    ids, labels = expand_image_tokens([1, 9, 5, 6], [IGNORE_INDEX, 9, IGNORE_INDEX, 6], image_token_id=9, num_image_tokens=3)
    assert ids == [1, 9, 9, 9, 5, 6]
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6]


def test_truncation_counts_image_tokens_and_never_cuts_them(tiny_tokenizer):
    messages = messages_from_llava(LLAVA)
    full = tokenize_conversation(messages, tiny_tokenizer, "vicuna_v1")
    n = len(full.input_ids)
    image_id = tiny_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    image_pos = full.input_ids.index(image_id)
    first_answer_end = len(learned_runs(full.input_ids, full.labels)[0]) + next(
        i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)

    same = tokenize_conversation(messages, tiny_tokenizer, "vicuna_v1", max_length=n + 9, num_image_tokens=10)
    assert same == full  # fits exactly once the image is expanded to 10 tokens

    cut = tokenize_conversation(messages, tiny_tokenizer, "vicuna_v1", max_length=first_answer_end + 9, num_image_tokens=10)
    assert cut.truncated and cut.input_ids == full.input_ids[:first_answer_end]
    assert len(expand_image_tokens(cut.input_ids, cut.labels, image_id, 10)[0]) == first_answer_end + 9
    assert [tiny_tokenizer.decode(r) for r in learned_runs(cut.input_ids, cut.labels)] == ["red</s>"]

    with pytest.raises(ConversationError) as err:
        tokenize_conversation(messages, tiny_tokenizer, "vicuna_v1", max_length=image_pos + 9, num_image_tokens=10)
    assert str(err.value) == (f"conversation too long for model_max_length={image_pos + 9}, image tokens would be cut; "
                              "raise model_max_length or drop the record")
    with pytest.raises(ConversationError) as err:
        tokenize_conversation(messages, tiny_tokenizer, "vicuna_v1", max_length=image_pos + 10, num_image_tokens=10)
    assert str(err.value) == (f"no answer tokens left after truncation to model_max_length={image_pos + 10}; "
                              "raise model_max_length or drop the record")
