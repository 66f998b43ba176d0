"""The one place a language model's tokenizer is made ready for the VLM.

Why shared: the model (`VitSplitLlavaForConditionalGeneration.from_components`) and the processor
(`VitSplitLlavaProcessor.from_components`) each load the tokenizer saved next to a hand-downloaded LM (e.g.
`lmsys/vicuna-7b-v1.5`, which has neither `<image>` nor a pad token). Both must add the same tokens in the same
order, or the model's `image_token_id` and vocabulary would not match the ids the processor writes.
"""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..conversation import IMAGE_TOKEN

PAD_TOKEN = "<pad>"


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """The id of `token`, or None when the tokenizer does not know it (it then maps to unk or to None)."""
    found = tokenizer.convert_tokens_to_ids(token)
    return None if found is None or found == tokenizer.unk_token_id else found


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add what the VLM needs, in place, and return the tokenizer; a tokenizer that has it all keeps its vocabulary.

    `<image>` becomes an extra special token (appended to the vocabulary, never split or merged with its
    neighbours). A missing pad token becomes the unk token, as LLaVA-1.5 does for Vicuna (no new embedding row),
    or a new `<pad>` when there is no unk token either. Resize the LM's embeddings to `len(tokenizer)` afterwards.
    """
    if hasattr(tokenizer, "legacy"):
        # transformers 5 honours `legacy` when loading but does not write it back on save: record it, or a
        # checkpoint trained with a legacy Llama tokenizer would be prompted by a non-legacy one (the token after
        # each `</s>` of a multi-turn prompt would change).
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    if token_id(tokenizer, IMAGE_TOKEN) is None:
        tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer
