"""Convert a llava-hf checkpoint into a ViT-Split LLaVA checkpoint; see vitsplit_vlm/models/convert_llava_hf.py."""
from vitsplit_vlm.models.convert_llava_hf import main

if __name__ == "__main__":
    raise SystemExit(main())
