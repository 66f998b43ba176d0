"""An LM whose tokenizer has neither `<image>` nor a pad token (a hand-downloaded Vicuna): model and processor
from components prepare it the same way, the embeddings grow with it, and the result runs and round-trips."""
import shutil

import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, LlamaTokenizer,
)

from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor, prepare_tokenizer
from vitsplit_vlm.vision import split_preset

VOCAB = 1000  # the sentencepiece vocabulary of the tiny tokenizer, before `<pad>` / `<image>`


@pytest.fixture(scope="module")
def vicuna_like(tiny_ckpts, tmp_path_factory):
    """Llama tokenizer files with only the sentencepiece vocabulary and an LM whose vocabulary is exactly that."""
    out = tmp_path_factory.mktemp("vicuna_like")
    shutil.copy(tiny_ckpts["llama"] / "tokenizer.model", out / "tokenizer.model")
    LlamaTokenizer.from_pretrained(out, add_bos_token=True, add_eos_token=False).save_pretrained(out)
    lm = AutoModelForCausalLM.from_pretrained(tiny_ckpts["llama"])
    lm.resize_token_embeddings(VOCAB)  # drop the rows of the tiny tokenizer's <pad> and <image>
    lm.config.pad_token_id = lm.generation_config.pad_token_id = None
    lm.save_pretrained(out)
    return out


def test_prepare_tokenizer_adds_image_token_and_unk_as_pad_once(vicuna_like, tiny_ckpts):
    tokenizer = AutoTokenizer.from_pretrained(vicuna_like)
    assert len(tokenizer) == VOCAB and tokenizer.pad_token is None
    assert prepare_tokenizer(tokenizer) is tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == VOCAB and len(tokenizer) == VOCAB + 1
    assert tokenizer.pad_token == tokenizer.unk_token == "<unk>" and tokenizer.pad_token_id == tokenizer.unk_token_id == 0
    ids = tokenizer("red<image>circle", add_special_tokens=False)["input_ids"]
    assert ids.count(VOCAB) == 1 and VOCAB not in tokenizer("red circle", add_special_tokens=False)["input_ids"]
    prepare_tokenizer(tokenizer)
    assert len(tokenizer) == VOCAB + 1 and tokenizer.pad_token_id == 0
    # The tiny checkpoint's tokenizer already has both: nothing changes.
    ready = AutoTokenizer.from_pretrained(tiny_ckpts["llama"])
    before = (len(ready), ready.convert_tokens_to_ids("<image>"), ready.pad_token_id)
    prepare_tokenizer(ready)
    assert (len(ready), ready.convert_tokens_to_ids("<image>"), ready.pad_token_id) == before == (1002, 1001, 1000)


def test_prepare_tokenizer_adds_pad_when_there_is_no_unk(vicuna_like):
    tokenizer = AutoTokenizer.from_pretrained(vicuna_like)
    tokenizer.unk_token = None
    prepare_tokenizer(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<image>") == VOCAB
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == VOCAB + 1 and len(tokenizer) == VOCAB + 2


def test_from_components_grows_the_vocabulary_to_the_prepared_tokenizer(tiny_ckpts, vicuna_like, tmp_path):
    torch.manual_seed(0)
    model = VitSplitLlavaForConditionalGeneration.from_components(
        tiny_ckpts["clip"], vicuna_like, split_preset("clip-l-vlm")
    ).eval()
    processor = VitSplitLlavaProcessor.from_components(tiny_ckpts["clip"], vicuna_like)
    lm = AutoModelForCausalLM.from_pretrained(vicuna_like).eval()

    assert model.config.image_token_id == processor.image_token_id == VOCAB
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == VOCAB + 1
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id == processor.tokenizer.unk_token_id
    for ours, source in ((model.get_input_embeddings(), lm.get_input_embeddings()),
                         (model.get_output_embeddings(), lm.get_output_embeddings())):
        assert ours.weight.shape == (VOCAB + 1, 64)
        torch.testing.assert_close(ours.weight[:VOCAB], source.weight, rtol=0, atol=0)
        # transformers' default mean-initialisation: the new row sits at the mean of the old ones.
        torch.testing.assert_close(ours.weight[VOCAB], source.weight.mean(0), rtol=0, atol=1e-4)

    text = processor(text="what colour is the circle?")
    with torch.no_grad():
        torch.testing.assert_close(model(**text).logits[..., :VOCAB], lm(**text).logits, rtol=0, atol=1e-5)

    images = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 255))]
    inputs = processor(text=["<image>\nwhat colour?"] * 2, images=images)
    assert (inputs["input_ids"] == VOCAB).sum(1).tolist() == [model.num_image_tokens] * 2
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == VOCAB + 1 and not torch.allclose(logits[0], logits[1])  # the image reaches the LM
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = AutoModelForImageTextToText.from_pretrained(tmp_path).eval(), AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded_processor, VitSplitLlavaProcessor)
    assert loaded.config.image_token_id == loaded_processor.image_token_id == VOCAB
    assert len(loaded_processor.tokenizer) == VOCAB + 1 and loaded_processor.tokenizer.pad_token_id == 0
    reloaded_inputs = loaded_processor(text=["<image>\nwhat colour?"] * 2, images=images)
    assert torch.equal(reloaded_inputs["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**reloaded_inputs).logits, logits, rtol=0, atol=0)


def test_processor_from_an_unprepared_tokenizer_says_how_to_prepare_it(tiny_ckpts, vicuna_like):
    with pytest.raises(ValueError) as err:
        VitSplitLlavaProcessor(AutoImageProcessor.from_pretrained(tiny_ckpts["clip"]), AutoTokenizer.from_pretrained(vicuna_like))
    assert str(err.value) == (
        "The tokenizer has no '<image>' token; add it with vitsplit_vlm.models.prepare_tokenizer (as from_components "
        "does) and resize the LM's embeddings to len(tokenizer)."
    )
