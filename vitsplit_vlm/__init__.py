"""ViT-Split: adapt frozen vision foundation models to multimodal LLMs and dense tasks (ICCV 2025)."""
__version__ = "0.1.0"
