"""Our prompts and ids against LLaVA-1.5's, re-derived here from its code's rules (haotian-liu/LLaVA at c121f04).

The oracle below is written from LLaVA's code, not from ours: ``conv_vicuna_v1`` / ``conv_llava_plain`` and
``Conversation.get_prompt`` (SeparatorStyle.TWO / PLAIN) in ``llava/conversation.py``, ``tokenizer_image_token`` in
``llava/mm_utils.py``, ``preprocess_multimodal`` / ``preprocess_v1`` / ``preprocess_plain`` in
``llava/train/train.py``, and the prompt of ``llava/eval/model_vqa_loader.py``. LLaVA's tokenizer is the LM's own
(no ``<image>`` token: the placeholder becomes IMAGE_TOKEN_INDEX = -200); ours has ``<image>`` added, so our image
id is mapped to -200 before comparing. Both legacy settings of the sentencepiece Llama tokenizer are covered.
"""
import shutil

import pytest
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, LlamaTokenizer

from vitsplit_vlm.conversation import IGNORE_INDEX, encode_prompt, render_prompt, tokenize_conversation
from vitsplit_vlm.data.llava_json import record_messages
from vitsplit_vlm.models import VitSplitLlavaProcessor, prepare_tokenizer

# --- the oracle: LLaVA-1.5's rules -----------------------------------------------------------------------------
LLAVA_IMAGE_INDEX = -200
LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_VQA_SUFFIX = "\nAnswer the question using a single word or phrase."  # llava_vqav2_*.jsonl "text" ending


def llava_multimodal(value: str) -> str:
    """preprocess_multimodal on one sentence (mm_use_im_start_end False, no mmtag)."""
    if "<image>" in value:
        value = value.replace("<image>", "").strip()
        value = ("<image>" + "\n" + value).strip()
    return value


def llava_v1_prompt(messages: list) -> str:
    """conv_vicuna_v1.get_prompt(): SeparatorStyle.TWO, sep " ", sep2 "</s>"; a None message is a generation cue."""
    out = LLAVA_SYSTEM + " "
    for i, (role, message) in enumerate(messages):
        out += f"{role}: {message}" + (" ", "</s>")[i % 2] if message else f"{role}:"
    return out


def llava_tokenize(prompt: str, tokenizer) -> list:
    """tokenizer_image_token: every chunk tokenised with tokenizer(chunk); later chunks lose their bos."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = list(chunks[0][:offset])
    for k, chunk in enumerate(chunks):
        ids += ([LLAVA_IMAGE_INDEX] if k else []) + chunk[offset:]
    return ids


def llava_v1(turns: list, tokenizer) -> tuple[str, list, list]:
    """preprocess_v1 (after preprocess_multimodal) for one record: prompt, input_ids, targets."""
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    conversation = llava_v1_prompt([(roles[t["from"]], llava_multimodal(t["value"])) for t in turns])
    has_image = "<image>" in conversation
    ids = llava_tokenize(conversation, tokenizer) if has_image else tokenizer(conversation).input_ids
    length = (lambda text: len(llava_tokenize(text, tokenizer))) if has_image else (lambda text: len(tokenizer(text).input_ids))
    targets = list(ids)
    sep = " ASSISTANT: "
    cur = 1
    targets[:cur] = [IGNORE_INDEX] * cur
    for i, rou in enumerate(conversation.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        round_len, instruction_len = length(rou), length(parts[0] + sep) - 2
        if i != 0 and not tokenizer.legacy:  # IS_TOKENIZER_GREATER_THAN_0_14 holds for today's tokenizers
            round_len, instruction_len = round_len - 1, instruction_len - 1
        targets[cur:cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    targets[cur:] = [IGNORE_INDEX] * (len(targets) - cur)
    if cur != len(ids):  # LLaVA's "tokenization mismatch": the whole record is ignored
        targets = [IGNORE_INDEX] * len(ids)
    return conversation, ids, targets


def llava_plain(turns: list, tokenizer) -> tuple[list, list]:
    """preprocess_plain: "<image>" + caption + conv_llava_plain.sep ("\\n"); the "<image>" prefix is masked."""
    ids = llava_tokenize("<image>" + turns[1]["value"] + "\n", tokenizer)
    masked = len(llava_tokenize("<image>", tokenizer))
    return ids, [IGNORE_INDEX] * masked + ids[masked:]


def llava_generation_prompt(turns: list) -> str:
    """The prompt LLaVA's chat / model_vqa_loader builds for a history ending with a human turn (image first)."""
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    return llava_v1_prompt([(roles[t["from"]], llava_multimodal(t["value"])) for t in turns] + [("ASSISTANT", None)])


# --- records --------------------------------------------------------------------------------------------------
def turns(*pairs):
    return [{"from": f, "value": v} for pair in pairs for f, v in zip(("human", "gpt"), pair)]


RECORDS = {
    "single": {"image": "a.png", "conversations": turns(("<image>\nWhat color is the circle?", "red"))},
    "multi": {"image": "a.png", "conversations": turns(("<image>\nWhat color is the circle?", "red"),
                                                       ("How many shapes are there?", "two shapes"),
                                                       ("Is it big?", "yes"))},
    "image_at_end": {"image": "a.png", "conversations": turns(
        ("Give a brief description of the image.\n<image>", "red circle on a blue square"))},
    "image_only": {"image": "a.png", "conversations": turns(("<image>", "small green triangle"))},
    "text_only": {"conversations": turns(("Is a circle round?", "yes"), ("And a square?", "no"))},
}


@pytest.fixture(scope="module", params=[False, True], ids=["legacy=False", "legacy=True"])
def tokenizers(request, tiny_ckpts, tmp_path_factory):
    """(LLaVA's tokenizer: the bare sentencepiece Llama tokenizer as a Vicuna checkpoint ships it, ours: the same
    loaded the same way and prepared for the VLM), both with the given legacy setting."""
    bare = tmp_path_factory.mktemp("vicuna_like")
    shutil.copy(tiny_ckpts["llama"] / "tokenizer.model", bare / "tokenizer.model")
    load = lambda: LlamaTokenizer.from_pretrained(bare, add_bos_token=True, legacy=request.param)  # noqa: E731
    theirs, ours = load(), prepare_tokenizer(load())
    assert theirs.legacy is ours.legacy is request.param and "<image>" not in theirs.get_vocab()
    return theirs, ours


def as_llava(ids, tokenizer):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    return [LLAVA_IMAGE_INDEX if i == image_id else i for i in ids]


def collapse_images(ids, image_id):
    """One -200 per run of image ids (LLaVA inserts one index that the model expands; our processor expands ids)."""
    out = []
    for i in ids:
        if i == image_id and out and out[-1] == LLAVA_IMAGE_INDEX:
            continue
        out.append(LLAVA_IMAGE_INDEX if i == image_id else i)
    return out


@pytest.mark.parametrize("name", list(RECORDS))
def test_vicuna_v1_training_ids_and_labels_equal_llava(name, tokenizers):
    theirs, ours = tokenizers
    conversation, ids, targets = llava_v1(RECORDS[name]["conversations"], theirs)
    messages, _ = record_messages(RECORDS[name])
    out = tokenize_conversation(messages, ours, "vicuna_v1")
    assert as_llava(out.input_ids, ours) == ids, conversation
    if any(t != IGNORE_INDEX for t in targets):
        assert out.labels == targets
    else:  # LLaVA's round arithmetic mis-counts this record and drops it; ours still learns each answer + </s>
        assert not theirs.legacy and name in ("multi", "text_only")
        learned = [i for i, label in zip(out.input_ids, out.labels) if label != IGNORE_INDEX]
        answers = [t["value"] for t in RECORDS[name]["conversations"][1::2]]
        assert learned == [i for a in answers for i in theirs(f" {a}</s>", add_special_tokens=False).input_ids]


@pytest.mark.parametrize("name", ["single", "image_at_end", "image_only"])
def test_plain_ids_and_labels_equal_llava_but_for_the_end_marker(name, tokenizers):
    theirs, ours = tokenizers
    ids, targets = llava_plain(RECORDS[name]["conversations"], theirs)
    messages, _ = record_messages(RECORDS[name])
    out = tokenize_conversation(messages, ours, "plain")
    # the one deliberate deviation: the caption ends with eos instead of conv_llava_plain's "\n"
    assert theirs.convert_ids_to_tokens(ids[-1]) == "<0x0A>" and out.input_ids[-1] == ours.eos_token_id
    assert as_llava(out.input_ids[:-1], ours) == ids[:-1]
    assert out.labels[:-1] == targets[:-1]


@pytest.mark.parametrize("name", list(RECORDS))
def test_generation_prompts_equal_llava(name, tokenizers, tiny_ckpts):
    """What chat and the benchmarks send: text, encode_prompt ids, and the processor's ids (raw text too)."""
    theirs, ours = tokenizers
    record = RECORDS[name]
    history = record["conversations"][:-1]  # every turn up to the last question
    prompt = llava_generation_prompt(history)
    ids = llava_tokenize(prompt, theirs)
    messages = record_messages(record)[0][:-1]
    assert render_prompt(messages, ours, "vicuna_v1") == prompt
    assert as_llava(encode_prompt(messages, ours, "vicuna_v1"), ours) == ids
    processor = VitSplitLlavaProcessor(AutoImageProcessor.from_pretrained(tiny_ckpts["clip"]), ours, patch_size=14)
    images = [Image.new("RGB", (30, 20), "red")] if "image" in record else None
    chat = processor.apply_chat_template(messages, template="vicuna_v1", tokenize=True, images=images)
    raw = processor(text=prompt, images=images)
    for inputs in (chat, raw):
        assert collapse_images(inputs["input_ids"][0].tolist(), processor.image_token_id) == ids


def test_image_only_and_image_at_end_layouts(tokenizers):
    _, ours = tokenizers
    assert render_prompt([{"role": "user", "content": "<image>"}], ours, "vicuna_v1") == (
        LLAVA_SYSTEM + " USER: <image> ASSISTANT:")
    assert render_prompt([{"role": "user", "content": "Describe it.\n<image>"}], ours, "vicuna_v1") == (
        LLAVA_SYSTEM + " USER: <image>\nDescribe it. ASSISTANT:")


def test_the_oracle_discriminates(tokenizers):
    """Guard on the test itself: with these records, whole-string tokenisation (the rule we replaced) differs
    from LLaVA's in the non-legacy setting, and the token after </s> depends on the legacy setting."""
    theirs, ours = tokenizers
    prompt = llava_generation_prompt(RECORDS["single"]["conversations"][:1])
    whole = as_llava(ours(prompt).input_ids, ours)
    assert (whole == llava_tokenize(prompt, theirs)) is theirs.legacy
    after_eos = theirs("red</s>USER:", add_special_tokens=False).input_ids[2]
    assert theirs.convert_ids_to_tokens(after_eos).startswith("▁") is theirs.legacy


@pytest.mark.parametrize("legacy", [False, True])
def test_converted_llava_hf_gets_model_vqa_loader_ids_from_our_vqav2_evaluation(legacy, tiny_ckpts, tmp_path, monkeypatch):
    """A llava-hf LLaVA-1.5 checkpoint converted by convert_llava_hf, asked a VQAv2 question through the VQAv2
    evaluation's answerer, is fed exactly the ids model_vqa_loader builds (image index expanded by the model)."""
    from test_convert import _make_llava_hf

    from vitsplit_vlm.eval.cli import SHORT_ANSWER, with_instruction
    from vitsplit_vlm.eval.generation import load_answerer
    from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
    from vitsplit_vlm.models.convert_llava_hf import convert_llava_hf

    _make_llava_hf(tiny_ckpts, tmp_path / "src")
    # the llava-hf tokenizer in the given setting (tokenizer.json keeps it: Metaspace prepend_scheme always/first)
    AutoTokenizer.from_pretrained(tiny_ckpts["llama"], legacy=legacy).save_pretrained(tmp_path / "src")
    convert_llava_hf(tmp_path / "src", tmp_path / "dst", "llava-baseline")

    seen = []
    generate = VitSplitLlavaForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        seen.append([[i for i, keep in zip(row, mask) if keep]
                     for row, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist())])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(VitSplitLlavaForConditionalGeneration, "generate", spy)
    answer = load_answerer(tmp_path / "dst", max_new_tokens=2, device="cpu")
    questions = ["What color is the circle?", "How many shapes are in the picture?"]
    answer([Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 30), "blue")],
           [with_instruction(q, SHORT_ANSWER) for q in questions])

    theirs = LlamaTokenizer.from_pretrained(copy_sp_model(tiny_ckpts, tmp_path), add_bos_token=True, legacy=legacy)
    expected = [llava_tokenize(llava_v1_prompt([("USER", "<image>\n" + q + LLAVA_VQA_SUFFIX), ("ASSISTANT", None)]),
                               theirs) for q in questions]
    processor = VitSplitLlavaProcessor.from_pretrained(tmp_path / "dst")
    (batch,) = seen
    assert [collapse_images(row, processor.image_token_id) for row in batch] == expected


def copy_sp_model(tiny_ckpts, tmp_path):
    bare = tmp_path / "vicuna_like"
    bare.mkdir()
    shutil.copy(tiny_ckpts["llama"] / "tokenizer.model", bare / "tokenizer.model")
    return bare
