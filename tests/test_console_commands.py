"""The console commands of pyproject.toml name the functions the scripts call, and each answers --help; the shipped
example images are what `vitsplit_vlm.demo_examples` draws. (The installed wheel itself: .ci/wheel_test.sh.)"""
import importlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitsplit_vlm import demo_examples

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
REPO = Path(__file__).resolve().parents[1]
COMMANDS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
SCRIPTS = {  # the clone's entry points: each must call the command's function
    "vitsplit-train": "scripts/train_vqa.py", "vitsplit-train-dense": "scripts/train_dense.py",
    "vitsplit-merge-lora": "scripts/merge_lora.py", "vitsplit-chat": "scripts/chat.py",
    "vitsplit-web-demo": "scripts/web_demo.py", "vitsplit-convert-llava-hf": "scripts/convert_llava_hf.py",
}


def _function(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        _function(COMMANDS[command])(["--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: ")


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_the_scripts_call_the_command_functions(command):
    module, _, name = COMMANDS[command].partition(":")
    source = (REPO / SCRIPTS[command]).read_text()
    assert re.search(rf"^from {re.escape(module)} import {name}\b", source, re.M), SCRIPTS[command]


def test_shipped_examples_are_the_drawn_scenes(tmp_path):
    drawn = demo_examples.draw_examples(tmp_path)
    assert {p.name for p in drawn} == {p.name for p in demo_examples.EXAMPLES_DIR.glob("*.png")}
    for path in drawn:
        with Image.open(path) as fresh, Image.open(demo_examples.EXAMPLES_DIR / path.name) as shipped:
            assert shipped.size == (demo_examples.IMAGE_SIZE,) * 2
            assert np.array_equal(np.asarray(fresh.convert("RGB")), np.asarray(shipped.convert("RGB"))), path.name
    assert [Path(p).name for p, _ in demo_examples.examples()] == [p.name for p in drawn]
