"""lmms-eval model `vitsplit_llava`: any lmms-eval image task on a saved VitSplitLlava checkpoint.

    python -m lmms_eval --model vitsplit_llava --model_args pretrained=CKPT --tasks pope,mme --batch_size 8

lmms-eval (0.7.3) finds the model through its own plugin mechanism, the Python entry-point group
``lmms_eval.models`` (``lmms_eval/models/registry_v2.py``, ``load_entrypoint_manifests``); this package declares
``vitsplit_llava = "vitsplit_vlm.lmms_plugin:manifest"`` there, so nothing in lmms-eval is patched or forked.

Each request's text (the task's prompt, e.g. POPE's question + "\\nAnswer the question using a single word or
phrase.") becomes the user turn after its image, rendered with the conversation template the checkpoint records
(as the chat and the native benchmarks do), and is answered greedily in batches by
`vitsplit_vlm.models.generation.generate_replies` (one vision pass and prefix prefill per image). Sampling
settings in a task's ``generation_kwargs`` are ignored (greedy always); ``max_new_tokens`` and ``until`` are
honoured. A LLaVA-1.5-style model sees one image per question: documents with no image or several are refused.
One process: lmms-eval's data-parallel launch (`accelerate launch`) is not supported.
"""
from __future__ import annotations

from collections.abc import Sequence

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from .conversation import IMAGE_TOKEN
from .eval.generation import image_prompt_messages
from .models.generation import generate_replies
from .models.loading import load_for_inference

MODEL_ID = "vitsplit_llava"
DEFAULT_MAX_NEW_TOKENS = 128


def manifest():
    """The entry-point payload lmms-eval registers (imported here: lmms-eval's model registry loads this module
    while it initialises)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VitSplitLlava")


def truncate_at(text: str, until: Sequence[str]) -> str:
    """The reply up to the first stop string (lmms-eval's ``until``), whitespace-stripped."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


def _messages(context: str) -> list[dict[str, str]]:
    """The user turn of the native benchmarks (image first, then the task's text); a text that already holds
    the placeholder keeps it (the renderer lays it out as LLaVA does)."""
    return [{"role": "user", "content": context}] if IMAGE_TOKEN in context else image_prompt_messages(context)


class VitSplitLlava(lmms):
    """A VitSplitLlava checkpoint (trained, or converted from llava-hf) behind lmms-eval's ``generate_until``.

    model_args: ``pretrained`` (checkpoint directory, required), ``device`` (default: the GPU of this process or
    the CPU), ``dtype`` (auto | float32 | bfloat16 | float16), ``template`` (default: the checkpoint's recorded
    conversation template), ``batch_size`` (questions per generate call; lmms-eval's ``--batch_size`` too).
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str = "auto", template: str | None = None,
                 batch_size: int | str = 1) -> None:
        super().__init__()
        self.model, self.processor, self.template = load_for_inference(pretrained, device=device, dtype=dtype,
                                                                       template=template)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def _image(self, request: Instance) -> Image.Image:
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        images = [v for v in visuals or [] if isinstance(v, Image.Image)]
        if len(images) != 1 or len(images) != len(visuals or []):
            raise ValueError(
                f"{MODEL_ID} answers one image per question (LLaVA-1.5 style), but task {task!r} ({split}) doc "
                f"{doc_id} gives {len(visuals or [])} visual(s); use a single-image task.")
        return images[0]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy replies, batched; requests sharing generation settings (one task) go through together, so
        the questions about one image share its vision pass."""
        replies: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs, *_ = request.args
            until = gen_kwargs.get("until") or []
            key = (int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
                   tuple([until] if isinstance(until, str) else until))
            groups.setdefault(key, []).append(index)
        progress = tqdm(total=len(requests), desc=f"{MODEL_ID} answering", disable=self.rank != 0)
        chunk = self.batch_size * 8  # bounds the decoded images held at once
        for (max_new_tokens, until), indices in groups.items():
            for start in range(0, len(indices), chunk):
                rows = indices[start:start + chunk]
                images = [self._image(requests[i]) for i in rows]
                conversations = [_messages(requests[i].args[0]) for i in rows]
                answers = generate_replies(self.model, self.processor, images, conversations, template=self.template,
                                           max_new_tokens=max_new_tokens, batch_size=self.batch_size)
                for i, answer in zip(rows, answers):
                    replies[i] = truncate_at(answer, until)
                progress.update(len(rows))
        progress.close()
        return replies

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_ID} only generates (generate_until tasks); loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_ID} answers single-round tasks only")
