"""Data layer: synthetic VQA (`synthetic`), easy-vqa conversion (`easy_vqa`), LLaVA-JSON dataset (`llava_json`),
batching (`collator`) and the record check CLI (`python -m vitsplit_vlm.data.check`).

Nothing is re-exported here so that `python -m vitsplit_vlm.data.<module>` imports only what it needs.
"""
