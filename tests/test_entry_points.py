"""Every command the README names, run in a subprocess as a user types it: `--help` for all of them, one-line
errors (exit 2, no traceback) for user mistakes, a real LoRA merge, and resume after kills at the two worst moments
(while a Trainer checkpoint or `final/` was being written). The installed console commands (`vitsplit-*`) are the
same functions and are run by the wheel test; the messages of every config check are tested in-process
(test_config, test_train_config), so only one or two per path are repeated here."""
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """`python <file>.py` / `deepspeed <file>.py` / `torchrun ... <file>.py` files and `python -m` modules."""
    files = sorted(set(re.findall(r"(?<![\w/.-])((?:scripts|eval|bench)/\w+\.py)\b", README)))
    modules = sorted(set(re.findall(r"python3? -m (vitsplit_vlm(?:\.\w+)+)", README)))
    return [[f] for f in files] + [["-m", m] for m in modules]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    return {**env, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **extra}


def run(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env or _env(), capture_output=True,
                          text=True, timeout=timeout)


def run_all(commands: list[list[str]], env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Several independent commands at once (each mostly waits on imports)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: run(args, env), commands))


def test_every_command_the_readme_names_answers_help():
    commands = readme_commands()
    names = {c[-1] for c in commands}
    assert {"scripts/train_vqa.py", "scripts/merge_lora.py", "scripts/convert_llava_hf.py", "scripts/train_dense.py",
            "scripts/chat.py", "vitsplit_vlm.data.check", "vitsplit_vlm.tiny"} <= names, names  # the parse works
    results = run_all([[*c, "--help"] for c in commands])
    failed = [f"{' '.join(c)}: rc {r.returncode}\n{r.stderr[-2000:]}" for c, r in zip(commands, results)
              if r.returncode != 0 or "usage:" not in r.stdout]
    assert not failed, "\n".join(failed)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a usage/config error (exit 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-4000:]
    return errors[0].removeprefix("error: ")


def _train_config(out: Path, **stage2) -> Path:
    stage = dict(train_parts=["projector", "language_model"], max_steps=2, per_device_train_batch_size=2,
                 logging_steps=1, warmup_steps=0, learning_rate=1e-3, save_steps=1, save_total_limit=3,
                 data={"synthetic_file": "train.json"})
    config = {"output_dir": str(out), "seed": 0, "model": {"tiny_size": "test"},
              "synthetic": {"num_train": 6, "num_val": 2, "image_size": 28}, "stage2": {**stage, **stage2}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_user_mistakes_end_in_one_line_and_exit_2(tiny_ckpts, tmp_path):
    """Each mistake: the command, and the message it must print (a regex on the one `error:` line)."""
    cfg = _train_config(tmp_path / "run")
    corrupt = tmp_path / "stage1" / "non_lm_trainables.safetensors"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    all_bad = tmp_path / "all_bad.json"
    all_bad.write_text(json.dumps([{"id": "e", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]}]))
    not_a_list = tmp_path / "one_object.json"
    not_a_list.write_text(json.dumps({"data": [1, 2]}))
    train, dense = ["scripts/train_vqa.py", "--config", cfg], ["scripts/train_dense.py", "--task", "seg"]
    c = re.escape(str(cfg))
    cases = [
        ([*train, "stage2=5"], rf"^{c}\.stage2: is a section of options, got 5; set its keys, e\.g\. stage2\.<option>=\.\.\.$"),
        ([*train, "stage2.learning_rate=0"], rf"^{c}\.stage2\.learning_rate: 0\.0: must be > 0\.$"),
        ([*train, "--vision_tower", tmp_path / "no_tower", "--language_model", tiny_ckpts["llama"]],
         r"^model\.vision_tower: no such directory .*/no_tower; pass a checkpoint directory on this machine"),
        ([*train, "--vision_tower", tiny_ckpts["llama"], "--language_model", tiny_ckpts["clip"]],
         r"^model\.vision_tower: .*/llama holds a 'llama' model, not a vision tower \(supported: .*\)\. Did you swap "
         r"the vision tower and the language model\?$"),
        ([*train, "--vision_tower", tiny_ckpts["clip"], "--language_model", tiny_ckpts["siglip"]],
         r"^model\.language_model: .*/siglip holds a 'siglip_vision_model' vision tower, not a language model\."),
        ([*train, f"stage2.init_from={corrupt.parent}"],
         rf"^stage2\.init_from: stage-1 weights {re.escape(str(corrupt))} are not a readable safetensors file \("),
        ([*train, f"stage2.data.train_json={tmp_path / 'missing.json'}", f"stage2.data.image_folder={tmp_path}"],
         r"^stage2\.data\.train_json: no such data file .*/missing\.json\.$"),
        ([*train, f"stage2.data.train_json={all_bad}", f"stage2.data.image_folder={tmp_path}", "stage2.data.skip_bad_samples=true"],
         rf"^{re.escape(str(all_bad))}: no usable record left: all 1 records are bad \(the first, e: empty answer in turn 1\)"),
        ([*dense, "train.learning_rate=-1"], r"dense_seg\.yaml\.train\.learning_rate: -1\.0: must be > 0\.$"),
        ([*dense, f"tower={tmp_path / 'no_tower'}"], r"dense_seg\.yaml: tower: no such directory .*/no_tower;"),
        (["scripts/convert_llava_hf.py", "--src", tiny_ckpts["llama"], "--dst", tmp_path / "converted"],
         r"^--src .*/llama: a 'llama' checkpoint, not a llava-hf one \(model_type 'llava'"),
        (["scripts/merge_lora.py", "--model", tmp_path, "--adapter", tmp_path, "--out", tmp_path / "merged"],
         rf"^{re.escape(str(tmp_path))} has no config\.json: expected a LoRA stage's base_model/ and final/ dirs\.$"),
        (["-m", "vitsplit_vlm.data.check", not_a_list, "--image-dir", tmp_path],
         rf"^{re.escape(str(not_a_list))}: the file is one JSON object, not a list of records; "),
    ]
    results = run_all([args for args, _ in cases])
    for (args, pattern), result in zip(cases, results):
        assert re.search(pattern, _one_line_error(result)), (args, result.stderr[-3000:])
    assert not (tmp_path / "converted").exists()


def test_data_check_tokenizer_is_never_looked_up_online(tmp_path):
    """A name that is not a directory is refused at once, even with the hub allowed (and unreachable)."""
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    env = {k: v for k, v in _env(HF_ENDPOINT="http://127.0.0.1:9").items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = run(["-m", "vitsplit_vlm.data.check", data, "--image-dir", tmp_path, "--tokenizer", "lmsys/vicuna-7b-v1.5",
                  "--max-length", "64", "--num-image-tokens", "4"], env=env)
    assert _one_line_error(result) == ("--tokenizer lmsys/vicuna-7b-v1.5: no such directory; pass the tokenizer's "
                                       "(or the LM's) local directory")


def test_merge_lora_script_merges_a_real_adapter(tiny_vlm_dir, tmp_path):
    from peft import PeftModel

    from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
    from vitsplit_vlm.train.config import LoraConfig
    from vitsplit_vlm.train.lora import apply_lora

    torch.manual_seed(0)
    peft_model = apply_lora(VitSplitLlavaForConditionalGeneration.from_pretrained(tiny_vlm_dir), LoraConfig(r=4, alpha=8),
                            ["projector"])
    with torch.no_grad():  # stands in for training: LoRA B starts at zero, the projector copy at the base values
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    result = run(["scripts/merge_lora.py", "--model", tiny_vlm_dir, "--adapter", tmp_path / "adapter", "--out", tmp_path / "merged"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith(f"-> {tmp_path / 'merged'}")
    merged = VitSplitLlavaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    peft_model.eval()
    ids = torch.tensor([[1, *[merged.config.image_token_id] * merged.num_image_tokens, 5, 6, 7]])
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        expected = peft_model(input_ids=ids, pixel_values=pixels).logits
        base = VitSplitLlavaForConditionalGeneration.from_pretrained(tiny_vlm_dir).eval()(input_ids=ids, pixel_values=pixels).logits
        got = merged(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-3  # the adapter did change the model
    assert (tmp_path / "merged" / "processor_config.json").is_file()


def _steps_logged(log: Path, since: int) -> list[int]:
    """Global steps with a training loss in the part of train.log written after byte `since`."""
    text = log.read_bytes()[since:].decode()
    return [int(m.group(1)) for m in re.finditer(r"\[stage2\] step (\d+): \{[^\n]*\"loss\"", text)]


def test_resume_skips_an_incomplete_checkpoint_and_rebuilds_final_without_training(tmp_path):
    out = tmp_path / "run"
    cfg = _train_config(out)
    stage, log = out / "stage2", out / "train.log"
    first = run(["scripts/train_vqa.py", "--config", cfg])
    assert first.returncode == 0, first.stderr[-4000:]
    assert _steps_logged(log, 0) == [1, 2]
    trained = load_file(stage / "final" / "model.safetensors")

    # Killed while the Trainer wrote checkpoint-2 (before its trainer_state.json) and so before final/.
    (stage / "checkpoint-2" / "trainer_state.json").unlink()
    shutil.rmtree(stage / "final")
    (stage / ".final.tmp").mkdir()
    (stage / ".final.tmp" / "config.json").write_text("{}")
    size = log.stat().st_size
    second = run(["scripts/train_vqa.py", "--config", cfg, "--resume"])
    assert second.returncode == 0, second.stderr[-4000:]
    output = second.stdout + second.stderr
    assert f"stage2: skipping incomplete {stage / 'checkpoint-2'} (no trainer_state.json" in output
    assert f"stage2: resuming from {stage / 'checkpoint-1'}" in output
    assert _steps_logged(log, size) == [2]  # step 2 again, exactly once
    resumed = load_file(stage / "final" / "model.safetensors")
    assert resumed.keys() == trained.keys()
    assert all(torch.allclose(resumed[k], v, atol=1e-6, rtol=0) for k, v in trained.items())

    # Killed while final/ was being written: checkpoint-2 is complete, so nothing is left to train.
    shutil.rmtree(stage / "final")
    size = log.stat().st_size
    third = run(["scripts/train_vqa.py", "--config", cfg, "--resume"])
    assert third.returncode == 0, third.stderr[-4000:]
    assert f"stage2: resuming from {stage / 'checkpoint-2'}" in third.stdout + third.stderr
    assert _steps_logged(log, size) == []  # not one step past max_steps
    rebuilt = load_file(stage / "final" / "model.safetensors")
    assert all(torch.equal(rebuilt[k], v) for k, v in resumed.items())
