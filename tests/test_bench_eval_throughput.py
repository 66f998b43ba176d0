"""bench/eval_throughput.py on the tiny VLM, in process: the three modes give identical answers on both question
sets, every figure the README quotes is reported, and a difference in answers stops the run."""
import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vitsplit_vlm.chat import ChatModel, GenerationSettings

_PATH = Path(__file__).resolve().parents[1] / "bench" / "eval_throughput.py"
_spec = importlib.util.spec_from_file_location("bench_eval_throughput", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def runs(tiny_chat_vlm_dir):
    chat_model = ChatModel.load(tiny_chat_vlm_dir, device="cpu", dtype="float32", settings=GenerationSettings(2, 0))
    args = argparse.Namespace(sets=list(bench.QUESTION_SETS), images=3, batch_size=4, max_new_tokens=2, repeats=1)
    return chat_model, {m: bench.run_mode(chat_model.model, chat_model.processor, m, args) for m in bench.MODES}


def test_modes_answer_identically_and_report_ratios_and_memory(runs):
    summary = bench.summarize(runs[1], num_images=3)
    assert {name: row["questions_per_image"] for name, row in summary["sets"].items()} == {
        "vqav2-val": 16 / 3, "pope": 6}
    for row in summary["sets"].values():
        assert row["answers_identical"] and set(row["modes"]) == set(bench.MODES)
        assert row["shared_vs_one"] > 0 and row["shared_vs_batched"] > 0
    assert all(mib > 0 for mib in summary["peak_mib"].values())


def test_different_answers_stop_the_run(runs):
    broken = {m: {**r, "sets": {k: dict(v) for k, v in r["sets"].items()}} for m, r in runs[1].items()}
    broken["prefix-shared"]["sets"]["pope"]["answers"] = [[0, 0]] * 18
    with pytest.raises(SystemExit, match="pope: prefix-shared answers differ from one-at-a-time on 18 questions"):
        bench.summarize(broken, num_images=3)


def test_chat_ttft_per_turn_with_and_without_the_cache(runs, tmp_path):
    Image.new("RGB", (30, 20), (200, 10, 10)).save(tmp_path / "a.png")
    for reuse in (True, False):
        result = bench.chat_ttft(runs[0], tmp_path / "a.png", turns=3, reuse=reuse)
        assert len(result["ttft_s"]) == 3 and all(t > 0 for t in result["ttft_s"])


def test_help_as_typed():
    done = subprocess.run([sys.executable, str(_PATH), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "prefix-shared" in done.stdout
