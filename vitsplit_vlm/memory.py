"""Memory estimates of a training stage per GPU: model states (DeepSpeed's own estimators) and activations.

Model states: DeepSpeed's `estimate_zero2_model_states_mem_needs` / `estimate_zero3_model_states_mem_needs`
(deepspeed 0.19) count every parameter as trained (16-bit weights and gradients, fp32 master weights and Adam
moments); a ViT-Split stage freezes the tower (and the LM in stage 1), so they get the trainable parameters and the
frozen weights are added at 2 bytes each (whole on every GPU under ZeRO-2, partitioned under ZeRO-3, on the CPU
with parameter offload).

Activations: what autograd keeps between forward and backward in bf16 with SDPA / flash attention (no
sequence x sequence score matrix is kept), per decoder layer of a Llama-style LM, after Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models", section 4.1) adapted to a gated MLP of width
`intermediate`; `tests/test_memory.py` checks it against the bytes autograd really saves. With gradient
checkpointing each layer keeps only its input and one layer at a time is recomputed. The frozen tower runs under
`no_grad` and keeps nothing; the task head, prior head and fusion keep theirs per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

BF16 = 2
GIB = 1024**3


def llama_layer_activation_bytes(tokens: int, hidden: int, intermediate: int) -> int:
    """Saved tensors of one decoder layer for `tokens` = batch x sequence: per token 8 bf16 vectors of the hidden
    width (norm outputs, q/k/v, attention output, residuals), the fp32 inputs of the two RMSNorms, and the gated
    MLP's gate, up, activation and product (4 bf16 vectors of the MLP width)."""
    return tokens * (BF16 * (8 * hidden + 4 * intermediate) + 4 * 2 * hidden)


def vit_block_activation_bytes(tokens: int, hidden: int, intermediate: int) -> int:
    """One pre-norm ViT block of the task head (LayerNorms, attention, fc1 -> GELU -> fc2): per token 7 bf16
    vectors of the hidden width and 3 of the MLP width."""
    return tokens * BF16 * (7 * hidden + 3 * intermediate)


def lm_head_activation_bytes(tokens: int, hidden: int, vocab: int) -> int:
    """The final RMSNorm (fp32 input and output) and the fp32 log-probabilities the cross-entropy keeps for its
    backward (the bf16 logits themselves are not kept)."""
    return tokens * 4 * (vocab + 2 * hidden)


@dataclass(frozen=True)
class ActivationEstimate:
    without_checkpointing: int
    with_checkpointing: int


def stage_activations(
    batch: int, seq_len: int, image_tokens: int, lm_layers: int, hidden: int, intermediate: int, vocab: int,
    vision_tokens: int, vision_hidden: int, vision_intermediate: int, task_layers: int, fusion_bytes_per_token: int,
) -> ActivationEstimate:
    """Bytes kept per GPU for one micro-batch of `batch` sequences of `seq_len` tokens, each with one image."""
    tokens = batch * seq_len
    layer = llama_layer_activation_bytes(tokens, hidden, intermediate)
    vision = batch * (task_layers * vit_block_activation_bytes(vision_tokens, vision_hidden, vision_intermediate)
                      + image_tokens * fusion_bytes_per_token)
    logits = lm_head_activation_bytes(tokens, hidden, vocab)
    full = lm_layers * layer + vision + logits
    # Checkpointed: every layer's input (bf16) stays, and one layer is recomputed (its full set) during backward.
    checkpointed = lm_layers * tokens * hidden * BF16 + layer + vision + logits
    return ActivationEstimate(full, checkpointed)


def largest_module_params(model: nn.Module) -> int:
    """Parameters of the largest leaf module: what ZeRO-3 gathers at once (DeepSpeed's `largest_layer_params`)."""
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


@dataclass(frozen=True)
class ModelStates:
    gpu_bytes: int
    cpu_bytes: int


def model_states(stage: int, offload: bool, trainable: int, frozen: int, largest_layer: int, gpus: int) -> ModelStates:
    """Per-GPU (and per-node CPU) bytes of weights, gradients and optimizer states under ZeRO `stage`."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            trainable, largest_layer, num_gpus_per_node=gpus, cpu_offload=offload, cpu_offload_params=offload)
        frozen_gpu = 0 if offload else math.ceil(frozen * BF16 / gpus)
        return ModelStates(gpu + frozen_gpu, cpu + (frozen * BF16 if offload else 0))
    cpu, gpu = estimate_zero2_model_states_mem_needs(trainable, num_gpus_per_node=gpus, cpu_offload=offload)
    return ModelStates(gpu + frozen * BF16, cpu)
