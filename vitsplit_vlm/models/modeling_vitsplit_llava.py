"""LLaVA-style multimodal LM on the ViT-Split vision module.

    pixel_values -> vision (ViTSplit: frozen tower, task head, prior head, fusion) -> projector -> visual tokens
    input_ids -> LM input embeddings, with the embeddings at `<image>` positions replaced by the visual tokens, in
    order (image i of the batch fills the i-th run of `num_image_tokens` image ids) -> any causal LM

The LM is a whole `AutoModelForCausalLM` (Llama, Qwen2, Mistral, ...), so its head, loss, KV cache and weight tying
are its own and generation is `GenerationMixin`'s: `pixel_values` are only consumed at the prefill step (the
generation loop drops them afterwards, see `MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL`).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache

from ..conversation import IMAGE_TOKEN
from ..vision import ViTSplit, ViTSplitConfig, build_tower, load_tower
from ..zero3 import full_numel
from .configuration_vitsplit_llava import VitSplitLlavaConfig
from .projector import build_projector
from .tokenizer import prepare_tokenizer, token_id

# Parts the trainer can (un)freeze per stage. The vision tower is not one of them: it always stays frozen.
TRAINABLE_PARTS = ("task_head", "prior_head", "projector", "language_model")


class PartCount(NamedTuple):
    part: str
    trainable: int
    total: int


class VitSplitLlavaForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = VitSplitLlavaConfig
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self, config: VitSplitLlavaConfig, tower: PreTrainedModel | None = None, language_model: PreTrainedModel | None = None
    ):
        """`tower` / `language_model`: already loaded components (`from_components`); None builds them from the
        config with random weights (what `from_pretrained` then fills)."""
        super().__init__(config)
        if config.image_token_id is None:
            raise ValueError("config.image_token_id is not set: give the id of the <image> token in the LM vocabulary.")
        self.vision = ViTSplit(tower if tower is not None else build_tower(config.vision_config), config.split_config)
        self.projector = build_projector(config.projector_type, self.vision.out_channels, config.text_config.hidden_size)
        self.language_model = language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @classmethod
    def from_components(
        cls,
        vision_path: str | Path,
        language_path: str | Path,
        split: ViTSplitConfig,
        projector_type: str = "mlp2x_gelu",
        image_token_id: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> "VitSplitLlavaForConditionalGeneration":
        """A fresh model from hand-downloaded checkpoints (e.g. CLIP ViT-L/14-336 + Vicuna-7B v1.5).

        The loaded tower and LM become the model's own modules and the task head is copied from the tower; the
        prior head, fusion and projector start fresh. Under an active ZeRO-3 config (`HfDeepSpeedConfig`, as
        `TrainingArguments(deepspeed=zero3.json)` sets it) every part is created partitioned (`zero.Init`): the
        tower and the LM load shard by shard through transformers' DeepSpeed integration, the new parts are
        initialised module by module, so no rank ever holds the whole model.
        The tokenizer saved next to the LM goes through `prepare_tokenizer` (as in `VitSplitLlavaProcessor.
        from_components`): when that adds `<image>` / a pad token, the LM's input and output embeddings grow to
        `len(tokenizer)` (new rows at the mean of the old ones, transformers' default), so the vocabulary and
        `image_token_id` match the processor's. Save the processor next to the model: it holds that tokenizer.
        `image_token_id=None` is the tokenizer's `<image>` id. `dtype=None` is torch's default dtype
        (`torch.get_default_dtype()`, float32 unless changed).
        """
        dtype = dtype or torch.get_default_dtype()
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(language_path))
        if image_token_id is None:
            image_token_id = token_id(tokenizer, IMAGE_TOKEN)
        tower = load_tower(vision_path, dtype=dtype)
        lm = AutoModelForCausalLM.from_pretrained(language_path, dtype=dtype)
        if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
            lm.resize_token_embeddings(len(tokenizer))  # also sets lm.config.vocab_size
        if lm.generation_config.pad_token_id is None:
            lm.generation_config.pad_token_id = tokenizer.pad_token_id
        attention = tower.config._attn_implementation, lm.config._attn_implementation
        config = VitSplitLlavaConfig(
            vision_config=tower.config, text_config=lm.config, split=split, projector_type=projector_type,
            image_token_id=image_token_id,
        )
        # The sub-configs are the loaded modules' own; the composite config resets their attention choice to its
        # own (unset) one, so they get back what they were loaded with.
        config.vision_config._attn_implementation, config.text_config._attn_implementation = attention
        model = cls._from_config(config, dtype=dtype, tower=tower, language_model=lm)
        model.vision.init_task_head_from_tower()
        model.generation_config = GenerationConfig.from_dict(lm.generation_config.to_dict())
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the tower is frozen again (loading makes every float weight
        trainable in transformers 5)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).vision.tower.requires_grad_(False)
        return loaded

    def _init_weights(self, module: nn.Module) -> None:
        """Our own layers (prior head, fusion, projector) start from PyTorch's default init, as LLaVA's projector and
        the official ViT-Split heads do; the tower and the LM are PreTrainedModels and initialise their own."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.reset_parameters()
        else:
            super()._init_weights(module)

    # The LM owns the token embeddings and the output head; resizing and tying go through it.
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image at the tower config's image size. `<image>` expands to the processor's
        `num_image_tokens`, which differs when the image processor crops to another size (DINOv2: 224 vs 518)."""
        return self.vision.num_tokens()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """num_images x num_image_tokens x LM width: the projected visual tokens, row-major over the patch grid."""
        return self.projector(self.vision(pixel_values).tokens)

    def _splice_images(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        if input_ids is None:
            raise ValueError("pixel_values need input_ids to find the <image> tokens; pass input_ids, not inputs_embeds.")
        image_mask = input_ids == self.config.image_token_id
        num_images = 0 if pixel_values is None else pixel_values.shape[0]
        per_image = self.vision.num_tokens(*pixel_values.shape[-2:]) if num_images else self.num_image_tokens
        found = int(image_mask.sum())
        if found != num_images * per_image:
            raise ValueError(
                f"input_ids hold {found} image tokens (id {self.config.image_token_id}) but {num_images} image(s) x "
                f"{per_image} tokens = {num_images * per_image} are needed. Put '{IMAGE_TOKEN}' in the text once per "
                f"image and let VitSplitLlavaProcessor expand it to {per_image} tokens; a truncated prompt may have "
                "cut image tokens (raise max_length)."
            )
        if not num_images:
            return inputs_embeds
        features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """`pixel_values`: num_images x 3 x H x W, images in the order their `<image>` runs appear (row by row).

        Returns the LM's `CausalLMOutputWithPast`; `labels` are used as given (-100 at image positions is the
        caller's, as the processor / dataset writes it).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        # Image tokens are checked at the prefill (no cache yet) and whenever images come in; decode steps with a
        # cache carry neither, so a generated token is never mistaken for a missing image.
        prefill = cache is None or cache.get_seq_length() == 0
        if pixel_values is not None or (prefill and input_ids is not None):
            inputs_embeds = self._splice_images(input_ids, inputs_embeds, pixel_values)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs,
        )

    def part_modules(self) -> dict[str, list[nn.Module]]:
        """The modules of the tower and of each trainable part (empty lists for the heads in baseline mode)."""
        vision = self.vision
        return {
            "tower": [vision.tower],
            "task_head": [m for m in (vision.task_blocks, vision.task_norm) if m is not None],
            "prior_head": [m for m in (vision.prior_head, vision.fusion) if m is not None],
            "projector": [self.projector],
            "language_model": [self.language_model],
        }

    def set_trainable(self, parts: Iterable[str]) -> None:
        """Train exactly `parts` (of TRAINABLE_PARTS) and freeze the rest; the vision tower always stays frozen.

        task_head = task blocks + task norm; prior_head = prior head + fusion (LLaVA stage 1 of the paper trains
        task_head + prior_head + projector, stage 2 adds language_model).
        """
        parts = set(parts)
        if unknown := parts - set(TRAINABLE_PARTS):
            raise ValueError(
                f"Unknown trainable parts {sorted(unknown)}; choose from {', '.join(TRAINABLE_PARTS)} "
                "(the vision tower always stays frozen)."
            )
        modules = self.part_modules()
        if missing := sorted(p for p in parts if not modules[p]):
            raise ValueError(
                f"{missing} do not exist with split.use_split=False (baseline); train projector and/or language_model."
            )
        self.vision.tower.requires_grad_(False)
        for part in TRAINABLE_PARTS:
            for module in modules[part]:
                module.requires_grad_(part in parts)

    def trainable_parameter_table(self) -> list[PartCount]:
        """(part, trainable params, total params) for the tower and each trainable part; tied weights count once."""
        rows = []
        for part, modules in self.part_modules().items():
            params = {id(p): p for m in modules for p in m.parameters()}.values()
            rows.append(PartCount(part, sum(full_numel(p) for p in params if p.requires_grad), sum(full_numel(p) for p in params)))
        return rows

