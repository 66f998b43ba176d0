"""Convert the ``easy-vqa`` PyPI package (64x64 shapes, 13 answers) to LLaVA JSON: an optional small real dataset.

The package ships ``easy_vqa/data/{train,test}/images/<image_id>.png`` and
``easy_vqa/data/{train,test}/questions.json`` (a list of ``[question, answer, image_id]``).

    pip install easy-vqa
    python -m vitsplit_vlm.data.easy_vqa --out DIR [--data-dir .../easy_vqa/data]

writes ``DIR/images/{train,test}/<id>.png`` (hard links), ``DIR/train.json`` (one record per question, id
``train_<n>``), ``DIR/train_open.json`` (the records of train.json whose answer is a shape or a colour, for the first
stage of ``configs/easy_vqa.yaml``) and ``DIR/val.json`` (the test split, one record per question, id ``test_<n>``,
with its ``question_type``: yes/no, shape or color, read off the answer). ``DIR/images`` is the folder a run config's
``image_folder`` (as in ``configs/easy_vqa.yaml``) and ``vitsplit-check-data --image-dir`` take.

Why one question per record, not an image's questions as the turns of one conversation as LLaVA-1.5 packs VQAv2:
easy-vqa asks "what is the blue shape?" beside "what color is the shape?" and "is there not a blue shape?", so in one
conversation an earlier turn gives a later answer away and the model can copy instead of looking. Splitting an
image's questions into conversations free of such leaks does not help either: which questions had to move out of
the first conversation then tells their answers (in one run the model answered "yes" to 3,897 of the test split's
4,448 un-negated yes/no questions, 36.0% right). Single questions are also what the test split asks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from vitsplit_vlm.data.synthetic import link_or_copy, vqa_record, write_json

SPLITS = {"train": "train", "test": "val"}  # easy-vqa split -> our file
SHAPES = ("circle", "rectangle", "triangle")  # easy-vqa's shapes; every other non-yes/no answer is a colour


def question_type(answer: str) -> str:
    """easy-vqa's three kinds of question, told apart by their answer vocabularies."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in SHAPES else "color"


def package_data_dir() -> Path:
    """``.../site-packages/easy_vqa/data`` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("easy-vqa is not installed: `pip install easy-vqa`, or pass its data folder as --data-dir")
    return Path(spec.origin).parent / "data"


def _questions(data_dir: Path, split: str) -> list[tuple[str, str, int]]:
    path = data_dir / split / "questions.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --data-dir must be easy-vqa's data folder (holding train/ and test/)")
    return [(str(q), str(a), int(i)) for q, a, i in json.loads(path.read_text())]


def convert(out_dir: str | Path, data_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``images/``, ``train.json``, ``train_open.json`` and ``val.json`` under ``out_dir``; returns their paths
    by name."""
    data_dir = Path(data_dir) if data_dir is not None else package_data_dir()
    out = Path(out_dir)
    paths = {"images": out / "images"}
    for split, name in SPLITS.items():
        questions = _questions(data_dir, split)
        for image_id in sorted({i for _, _, i in questions}):
            link_or_copy(data_dir / split / "images" / f"{image_id}.png", out / "images" / split / f"{image_id}.png")
        records = [{**vqa_record(f"{split}_{n}", f"{split}/{i}.png", [(q, a)]), "question_type": question_type(a)}
                   for n, (q, a, i) in enumerate(questions)]
        paths[name] = write_json(out / f"{name}.json", records)
        if name == "train":
            paths["train_open"] = write_json(out / "train_open.json", [r for r in records if r["question_type"] != "yes/no"])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitsplit_vlm.data.easy_vqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--data-dir", help="easy-vqa's data folder (default: the installed package's)")
    args = parser.parse_args(argv)
    try:
        paths = convert(args.out, args.data_dir)
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {paths['train']}, {paths['train_open']} and {paths['val']}; their images are under {paths['images']} "
          "(a config's image_folder)")


if __name__ == "__main__":
    main()
