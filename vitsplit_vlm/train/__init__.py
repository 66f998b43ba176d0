"""Staged VLM training (HF Trainer + DeepSpeed ZeRO, peft LoRA): `scripts/train_vqa.py` is `vitsplit_vlm.train.run`.

Nothing is re-exported here so that importing a helper (e.g. the config dataclasses) does not import DeepSpeed.
"""
