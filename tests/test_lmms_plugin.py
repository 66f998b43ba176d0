"""lmms-eval 0.7.3 runs its own `pope` and `mme` task definitions on a VitSplitLlava checkpoint through our plugin
(`python -m lmms_eval --model vitsplit_llava ...`, found through lmms-eval's entry-point group), offline, on small
local copies of the tasks' datasets in their own schema (a directory named like the task's `dataset_path`, which
`datasets.load_dataset` reads instead of the Hub). Needs the `[lmms]` extra and `pip install --no-deps lmms-eval`
(`.ci/lmms_eval.sh`).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("VITSPLIT_REQUIRE_LMMS_EVAL") != "1":  # CI installs lmms-eval: there a missing one fails
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (the [lmms] extra + pip install --no-deps lmms-eval)")

import datasets  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

INSTRUCTION = "Answer the question using a single word or phrase."  # both tasks' default post_prompt
MME_SUFFIX = " Please answer yes or no."  # in MME's questions; the task swaps it for its post_prompt
POPE_OBJECTS = ["cat", "dog", "car", "chair", "person", "bottle"]
MME_CATEGORIES = ["existence", "color", "commonsense_reasoning"]  # two perception, one cognition


def _image(k: int) -> Image.Image:
    return Image.new("RGB", (24 + 9 * (k % 4), 28 + 5 * (k % 3)), (37 * k % 256, 255 - 23 * k % 256, 90 + 11 * k % 160))


def write_pope(root: Path, num_images: int = 6) -> list[dict]:
    """lmms-lab-encoder/POPE's test split: id, question_id, question, answer, image_source, image, category."""
    rows = []
    for k in range(num_images):
        for j, obj in enumerate(POPE_OBJECTS[k % 2::2][:3]):
            rows.append({"id": str(len(rows)), "question_id": str(len(rows)), "question": f"Is there a {obj} in the image?",
                         "answer": "yes" if (k + j) % 2 else "no", "image_source": f"COCO_val2014_{k:012d}",
                         "image": _image(k), "category": ["adversarial", "popular", "random"][j]})
    features = datasets.Features({name: datasets.Value("string") for name in
                                  ["id", "question_id", "question", "answer", "image_source", "category"]}
                                 | {"image": datasets.Image()})
    _save(rows, features, root / "lmms-lab-encoder" / "POPE")
    return rows


def write_mme(root: Path, per_category: int = 3) -> list[dict]:
    """lmms-lab-encoder/MME's test split: question_id, image, question, answer, category; two questions (one
    "Yes", one "No") per image, as MME's pairwise score needs."""
    rows = []
    for c, category in enumerate(MME_CATEGORIES):
        for k in range(per_category):
            image = _image(10 + 3 * c + k)
            for answer, thing in (("Yes", "a shape"), ("No", "a giraffe")):
                rows.append({"question_id": f"{category}/{k:04d}.png", "image": image, "category": category,
                             "question": f"Is there {thing} in this image?{MME_SUFFIX}", "answer": answer})
    features = datasets.Features({name: datasets.Value("string") for name in ["question_id", "question", "answer", "category"]}
                                 | {"image": datasets.Image()})
    _save(rows, features, root / "lmms-lab-encoder" / "MME")
    return rows


def _save(rows: list[dict], features: datasets.Features, repo: Path) -> None:
    (repo / "data").mkdir(parents=True)
    columns = {name: [row[name] for row in rows] for name in features}
    datasets.Dataset.from_dict(columns, features=features).to_parquet(repo / "data" / "test-00000-of-00001.parquet")


def yes_no_checkpoint(tiny_vlm_dir: Path, out: Path, prompts: list[tuple[Image.Image, str]]) -> Path:
    """The tiny random VLM made to reply exactly "yes" or "no", depending on its input: its generation_config
    allows only those two words, then eos; their output rows are +v and -v, with v the direction along which
    the LM's last hidden states for `prompts` (image, question) vary most, shifted along their mean so that
    half the prompts fall on each side: the answers split between yes and no."""
    import torch

    from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor

    model = VitSplitLlavaForConditionalGeneration.from_pretrained(tiny_vlm_dir).eval()
    processor = VitSplitLlavaProcessor.from_pretrained(tiny_vlm_dir)
    tokenizer = processor.tokenizer
    with torch.no_grad():
        states = torch.stack([model(**processor.apply_chat_template(
            [{"role": "user", "content": f"<image>\n{question}\n{INSTRUCTION}"}], tokenize=True, images=[image]),
            output_hidden_states=True).hidden_states[-1][0, -1] for image, question in prompts])
        mean = states.mean(0)
        direction = torch.linalg.svd(states - mean, full_matrices=False).Vh[0]
        direction *= 100 / direction.norm()
        middle = (states @ direction).sort().values[len(prompts) // 2 - 1:len(prompts) // 2 + 1].mean()
        direction -= middle / (mean @ mean) * mean  # h = mean + small: the middle two prompts now sit either side of 0
        yes, no = tokenizer.convert_tokens_to_ids(["▁yes", "▁no"])
        head = model.get_output_embeddings().weight
        head[yes], head[no] = direction, -direction
    model.save_pretrained(out)
    processor.save_pretrained(out)
    eos = tokenizer.eos_token_id
    GenerationConfig(
        suppress_tokens=[i for i in range(len(tokenizer)) if i not in (yes, no, eos)],
        begin_suppress_tokens=[eos],  # first a word, then only eos (a word after a word is ruled out)
        sequence_bias=[[[a, b], -1e9] for a in (yes, no) for b in (yes, no)],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    return out


def our_answers(ckpt: Path, images, questions) -> list[str]:
    """The same questions through our native benchmarks' answerer (VQAv2, GQA, POPE)."""
    from vitsplit_vlm.eval.cli import with_instruction
    from vitsplit_vlm.eval.generation import load_answerer

    return load_answerer(ckpt, max_new_tokens=4, device="cpu")(images, [with_instruction(q, INSTRUCTION) for q in questions])


def pope_metrics(preds: list[str], gts: list[str]) -> dict[str, float]:
    """lmms-eval's POPE definitions (exact match; yes_ratio is the share of "yes" ground truths)."""
    tp = sum(p == g == "yes" for p, g in zip(preds, gts))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, gts))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, gts))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"pope_accuracy": sum(p == g for p, g in zip(preds, gts)) / len(gts), "pope_precision": precision,
            "pope_recall": recall, "pope_f1_score": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "pope_yes_ratio": gts.count("yes") / len(gts)}


def mme_scores(rows: list[dict], preds: list[str]) -> dict[str, float]:
    """MME: per category, mean over images of accuracy + accuracy+ (both questions right), in percent, summed
    over the perception and the cognition categories."""
    per_image: dict[tuple[str, str], list[bool]] = {}
    for row, pred in zip(rows, preds):
        per_image.setdefault((row["category"], row["question_id"]), []).append(pred == row["answer"].lower())
    totals = {"mme_perception_score": 0.0, "mme_cognition_score": 0.0}
    for category in MME_CATEGORIES:
        images = [v for (c, _), v in per_image.items() if c == category]
        score = sum(100 * sum(v) / 2 + 100 * all(v) for v in images) / len(images)
        totals["mme_cognition_score" if category == "commonsense_reasoning" else "mme_perception_score"] += score
    return totals


def test_lmms_eval_runs_pope_and_mme_through_the_plugin(tiny_vlm_dir, tmp_path):
    pope, mme = write_pope(tmp_path), write_mme(tmp_path)
    questions = [r["question"] for r in pope] + [r["question"].replace(MME_SUFFIX, "") for r in mme]
    images = [r["image"] for r in pope + mme]
    ckpt = yes_no_checkpoint(tiny_vlm_dir, tmp_path / "ckpt", list(zip(images, questions)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "vitsplit_llava", "--model_args", f"pretrained={ckpt}",
           "--tasks", "pope,mme", "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0 and "Traceback" not in log, log[-4000:]  # lmms-eval exits 0 after some errors
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]

    expected = our_answers(ckpt, images, questions)
    expected_pope, expected_mme = expected[:len(pope)], expected[len(pope):]
    assert set(expected_pope) == set(expected_mme) == {"yes", "no"}  # the scores below are not degenerate

    samples = {task: sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
               for task in ("pope", "mme") for path in (tmp_path / "out").rglob(f"*_samples_{task}.jsonl")}
    assert [s["filtered_resps"] for s in samples["pope"]] == expected_pope
    assert [s["filtered_resps"] for s in samples["mme"]] == expected_mme

    want = pope_metrics(expected_pope, [r["answer"] for r in pope])
    got = {name: results["pope"][f"{name},none"] for name in want}
    assert got == pytest.approx(want, abs=1e-12)
    want = mme_scores(mme, expected_mme)
    got = {name: results["mme"][f"{name},none"] for name in want}
    assert got == pytest.approx(want, abs=1e-9)
    print("lmms-eval scores:", {t: {k: v for k, v in r.items() if "," in k and "stderr" not in k} for t, r in results.items()})
