import pytest
import torch
from transformers import AutoTokenizer

from vitsplit_vlm.conversation import IGNORE_INDEX
from vitsplit_vlm.data.collator import LlavaCollator


def item(ids, labels, image=None):
    out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if image is not None:
        out["pixel_values"] = torch.full((3, 4, 4), float(image))
    return out


def test_right_pads_and_stacks_images_of_image_rows_in_order(tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    batch = LlavaCollator(tiny_tokenizer)([
        item([1, 5, 6], [IGNORE_INDEX, 5, 6], image=1),
        item([1, 7], [IGNORE_INDEX, 7]),
        item([1, 8, 9, 10], [IGNORE_INDEX, IGNORE_INDEX, 9, 10], image=3),
    ])
    assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values"}
    assert batch["input_ids"].tolist() == [[1, 5, 6, pad], [1, 7, pad, pad], [1, 8, 9, 10]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX],
                                        [IGNORE_INDEX, IGNORE_INDEX, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0]


def test_attention_mask_comes_from_lengths_not_pad_id(tiny_tokenizer):
    # a real token equal to the pad id (tokenizers may share pad with eos/unk) stays attended
    batch = LlavaCollator(tiny_tokenizer, pad_to_multiple_of=8)([item([1, tiny_tokenizer.pad_token_id], [IGNORE_INDEX, 2])])
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]
    assert "pixel_values" not in batch  # text-only batch: no images at all


def test_refuses_unstackable_images_and_missing_pad(tiny_tokenizer):
    bad = item([1], [IGNORE_INDEX], image=0)
    bad["pixel_values"] = torch.zeros(3, 5, 5)
    with pytest.raises(ValueError, match=r"images in one batch must share a shape to be stacked, got \[\(3, 4, 4\), \(3, 5, 5\)\]"):
        LlavaCollator(tiny_tokenizer)([item([1], [IGNORE_INDEX], image=0), bad])
    no_pad = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="^the tokenizer has no pad token; set tokenizer.pad_token before batching$"):
        LlavaCollator(no_pad)
