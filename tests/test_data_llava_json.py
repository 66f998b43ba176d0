import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, LlamaTokenizer

from vitsplit_vlm.conversation import IGNORE_INDEX, IMAGE_TOKEN, tokenize_conversation
from vitsplit_vlm.data import check
from vitsplit_vlm.data.llava_json import (
    BadRecordError,
    DataFileError,
    LlavaDataset,
    load_llava_json,
    record_messages,
    scan_records,
)
from vitsplit_vlm.models import to_rgb

N_IMG = 4
MAX_LEN = 96


def turns(*pairs):
    return [{"from": f, "value": v} for pair in pairs for f, v in zip(("human", "gpt"), pair)]


GOOD = [
    {"id": "rgb", "image": "rgb.png", "conversations": turns(("<image>\nWhat color?", "red"))},
    {"id": "rgba", "image": "rgba.png", "conversations": turns(("<image>\nWhat color?", "blue"), ("Sure?", "yes"))},
    {"id": "gray", "image": "sub/gray.png", "conversations": turns(("What is this?\n<image>", "gray"))},
    {"id": "palette", "image": "pal.png", "conversations": turns(("<image> Which shape?", "square"))},
    {"id": 7, "image": "photo.jpg", "conversations": turns(("<image>\nHow many?", "2"))},
    {"id": "text", "conversations": turns(("Is a circle round?", "yes"), ("And a square?", "no"))},
    {"id": "long-answer", "image": "rgb.png", "conversations": turns(("<image>\nDescribe.", "red " * 80))},
]
BAD = [  # (record, reason printed by the check)
    ({"id": "missing", "image": "nope.png", "conversations": turns(("<image>\nq", "a"))}, "image not found: {d}/nope.png"),
    ({"id": "roles", "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "a"}]},
     "bad roles ['human', 'human']: expected alternating human/gpt turns starting with human and ending with gpt"),
    ({"id": "no-placeholder", "image": "rgb.png", "conversations": turns(("q", "a"))},
     "no <image> in the first human turn although an image is given"),
    ({"id": "twice", "image": "rgb.png", "conversations": turns(("<image><image>q", "a"))},
     "<image> appears 2 times in the first human turn; expected once"),
    ({"id": "later", "image": "rgb.png", "conversations": turns(("<image>\nq", "a"), ("<image>\nq", "a"))},
     "<image> outside the first human turn (turn 2)"),
    ({"id": "stray", "conversations": turns(("<image>\nq", "a"))}, "<image> in a record without an image"),
    ({"id": "empty", "image": "rgb.png", "conversations": turns(("<image>\nq", " "))}, "empty answer in turn 1"),
    ({"id": "multi", "image": ["rgb.png", "pal.png"], "conversations": turns(("<image>\nq", "a"))},
     "'image' must be one file path string (multi-image records are not supported)"),
    ({"image": "rgb.png", "conversations": turns(("<image>\n" + "why " * 80, "a"))},
     f"no answer tokens left after truncation to model_max_length={MAX_LEN}; raise model_max_length or drop the record"),
    ({"id": "corrupt", "image": "corrupt.jpg", "conversations": turns(("<image>\nq", "a"))}, "corrupt image {d}/corrupt.jpg: "),
]


def write_images(d: Path) -> None:
    (d / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(d / "rgb.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (0, 0, 255, 255)
    rgba[:, 16:] = (0, 0, 255, 0)  # transparent: the hidden blue must not show
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.new("L", (32, 32), 128).save(d / "sub" / "gray.png")
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(d / "pal.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(d / "photo.jpg", quality=95)
    (d / "corrupt.jpg").write_bytes((d / "photo.jpg").read_bytes()[:200])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("llava")
    write_images(d / "images")
    records = [r for r, _ in BAD[:3]] + GOOD + [r for r, _ in BAD[3:]]
    (d / "mixed.json").write_text(json.dumps(records))
    (d / "good.json").write_text(json.dumps(GOOD))
    return d


@pytest.fixture(scope="module")
def processor(tiny_processor):
    """The image transform training hands the dataset: the processor's own preprocess_images."""
    return tiny_processor.preprocess_images


def make(files, tok, processor, name="good.json", **kw):
    kw = {"num_image_tokens": N_IMG, "model_max_length": MAX_LEN, "cache_dir": files / "hf", **kw}
    return LlavaDataset(files / name, files / "images", tok, processor, **kw)


def test_items_have_expanded_ids_masked_labels_and_rgb_pixels(files, tiny_ckpts, tiny_tokenizer, processor):
    ds = make(files, tiny_tokenizer, processor)
    assert len(ds) == len(GOOD)
    assert (ds.stats.total, ds.stats.skipped, ds.stats.truncated, ds.stats.text_only) == (7, 0, 1, 1)
    image_id = tiny_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for i, record in enumerate(GOOD):
        item = ds[i]
        ids, labels = item["input_ids"], item["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and len(ids) <= MAX_LEN
        has_image = "image" in record
        assert int((ids == image_id).sum()) == (N_IMG if has_image else 0)
        assert bool((labels[ids == image_id] == IGNORE_INDEX).all())
        if has_image:
            first = int((ids == image_id).nonzero()[0])
            after = tiny_tokenizer.convert_ids_to_tokens(ids[first + N_IMG:first + N_IMG + 2].tolist())
            assert after == ["▁", "<0x0A>"]  # placeholder moved to the start; the text after it starts a word
            rgb = to_rgb(Image.open(files / "images" / record["image"]))
            expected = AutoImageProcessor.from_pretrained(tiny_ckpts["clip"])(images=rgb, return_tensors="pt")["pixel_values"][0]
            assert torch.equal(item["pixel_values"], expected)
        else:
            assert "pixel_values" not in item
        learned = labels != IGNORE_INDEX
        assert torch.equal(labels[learned], ids[learned])
        starts = (learned & ~torch.cat([torch.tensor([False]), learned[:-1]])).nonzero().flatten().tolist()
        ends = (learned & ~torch.cat([learned[1:], torch.tensor([False])])).nonzero().flatten().tolist()
        runs = [tiny_tokenizer.decode(ids[s:e + 1]).strip() for s, e in zip(starts, ends)]
        answers = [t["value"] for t in record["conversations"][1::2]]
        if record["id"] == "long-answer":  # truncated: the answer runs to the end, without its eos
            assert len(ids) == MAX_LEN and ends == [MAX_LEN - 1] and runs[0].startswith("red red")
        else:
            assert runs == [a + "</s>" for a in answers]
    assert ds.modality_lengths == [len(ds[i]["input_ids"]) * (1 if "image" in r else -1) for i, r in enumerate(GOOD)]


def test_record_messages_moves_the_placeholder_to_the_start():
    messages, image = record_messages(GOOD[2])
    assert image == "sub/gray.png"
    assert messages == [{"role": "user", "content": "<image>\nWhat is this?"}, {"role": "assistant", "content": "gray"}]
    assert record_messages(GOOD[5]) == ([{"role": "user", "content": "Is a circle round?"}, {"role": "assistant", "content": "yes"},
                                         {"role": "user", "content": "And a square?"}, {"role": "assistant", "content": "no"}], None)


def test_configuration_errors_fail_once_before_the_scan(files, tiny_tokenizer):
    ds = load_llava_json(files / "good.json", cache_dir=files / "hf")
    with pytest.raises(ValueError, match=r"^unknown conversation template 'llava'; choose one of \('plain', 'vicuna_v1', 'chat_template'\)$"):
        scan_records(ds, files / "images", tokenizer=tiny_tokenizer, template="llava")
    with pytest.raises(ValueError, match="^template 'chat_template' needs a tokenizer with a chat_template"):
        scan_records(ds, files / "images", tokenizer=tiny_tokenizer, template="chat_template")


def test_to_rgb_handles_alpha_gray_and_palette(files):
    rgba = np.asarray(to_rgb(Image.open(files / "images" / "rgba.png")))
    assert (rgba[:, :16] == (0, 0, 255)).all() and (rgba[:, 16:] == 255).all()
    assert (np.asarray(to_rgb(Image.open(files / "images" / "sub" / "gray.png"))) == 128).all()
    assert (np.asarray(to_rgb(Image.open(files / "images" / "pal.png"))) == (0, 255, 0)).all()
    pal = Image.new("P", (2, 1), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 1
    assert (np.asarray(to_rgb(pal)) == 255).all()


def test_bad_records_stop_the_run_up_front_naming_the_first(files, tiny_tokenizer, processor):
    with pytest.raises(BadRecordError) as err:
        make(files, tiny_tokenizer, processor, "mixed.json")
    assert err.value.record_id == "missing"
    assert str(err.value) == (
        f"bad record missing in {files / 'mixed.json'}: image not found: {files / 'images'}/nope.png "
        f"(and {len(BAD) - 1} more bad records); list them with "
        f"`python -m vitsplit_vlm.data.check {files / 'mixed.json'} --image-dir {files / 'images'}` or set skip_bad_samples: true"
    )


def test_skip_bad_samples_drops_and_counts_them(files, tiny_tokenizer, processor):
    ds = make(files, tiny_tokenizer, processor, "mixed.json", skip_bad_samples=True)
    assert len(ds) == len(GOOD)
    assert (ds.stats.total, ds.stats.skipped, ds.stats.truncated, ds.stats.text_only) == (17, 10, 1, 1)
    assert [b.record_id for b in ds.stats.skipped_records] == ["missing", "roles", "no-placeholder", "twice", "later",
                                                               "stray", "empty", "multi", "#15", "corrupt"]
    assert list(ds.rows["record_id"]) == [str(r["id"]) for r in GOOD]


def test_image_gone_after_the_scan_is_named(files, tiny_tokenizer, processor, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes((files / "images" / "rgb.png").read_bytes())
    (tmp_path / "d.json").write_text(json.dumps([{"id": "x", "image": "x.png", "conversations": turns(("<image>\nq", "a"))}]))
    ds = LlavaDataset(tmp_path / "d.json", tmp_path / "images", tiny_tokenizer, processor, num_image_tokens=N_IMG,
                      cache_dir=tmp_path / "hf")
    (tmp_path / "images" / "x.png").unlink()
    with pytest.raises(BadRecordError, match=r"^bad record x in .*d\.json: cannot read image .*x\.png: "):
        ds[0]


def test_tokenisation_is_cached_by_datasets(files, tiny_tokenizer, processor):
    make(files, tiny_tokenizer, processor)
    before = sorted(p.name for p in (files / "hf").rglob("*.arrow"))
    make(files, tiny_tokenizer, processor)
    assert sorted(p.name for p in (files / "hf").rglob("*.arrow")) == before


def test_malformed_json_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"id": "a",\n  "conversations": [}\n]')
    with pytest.raises(DataFileError) as err:
        load_llava_json(bad, cache_dir=tmp_path / "hf")
    assert str(err.value) == f"{bad}: invalid JSON at line 3 column 21: Expecting value"
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"id": "a", "conversations": []}\n{"id": "b", "conversations": [\n')
    with pytest.raises(DataFileError, match=r"bad\.jsonl: invalid JSON at line 2 column 31: Expecting value$"):
        load_llava_json(lines, cache_dir=tmp_path / "hf")
    with pytest.raises(DataFileError, match=r"nothere\.json: no such data file$"):
        load_llava_json(tmp_path / "nothere.json")


def test_check_lists_every_bad_record(files, tiny_ckpts, capsys):
    argv = [str(files / "mixed.json"), "--image-dir", str(files / "images")]
    assert check.main(argv + ["--tokenizer", str(tiny_ckpts["llama"]), "--max-length", str(MAX_LEN),
                              "--num-image-tokens", str(N_IMG)]) == 1
    out = capsys.readouterr().out.splitlines()
    indices = [0, 1, 2] + [3 + len(GOOD) + k for k in range(len(BAD) - 3)]
    expected = []
    for (record, reason), index in zip(BAD, indices):
        rid = record.get("id", f"#{index}")
        expected.append(f"bad record {rid} (#{index}): {reason.format(d=files / 'images')}")
    assert len(out) == len(BAD) + 1
    for line, want in zip(out, expected):
        assert line.startswith(want) if want.endswith(": ") else line == want
    assert out[-1] == f"{files / 'mixed.json'}: 17 records, 10 bad, 1 text-only, 1 truncated to model_max_length={MAX_LEN}"


def test_check_prepares_a_raw_vicuna_tokenizer_as_training_does(files, tiny_tokenizer, tiny_ckpts, tmp_path, capsys):
    """A hand-downloaded Vicuna tokenizer has no <image>: the check adds it (prepare_tokenizer) as training does, so
    the placeholder counts as one token, not as the pieces its text splits into."""
    raw = tmp_path / "vicuna"
    raw.mkdir()
    shutil.copy(tiny_ckpts["llama"] / "tokenizer.model", raw / "tokenizer.model")
    LlamaTokenizer.from_pretrained(raw, add_bos_token=True, add_eos_token=False).save_pretrained(raw)
    unprepared = AutoTokenizer.from_pretrained(raw)
    assert unprepared.convert_tokens_to_ids(IMAGE_TOKEN) == unprepared.unk_token_id
    assert len(unprepared(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]) > 1
    record = GOOD[0]
    # Exactly model_max_length long with <image> as one token (one image token per image): split into its
    # pieces, the record would be longer and lose its answer.
    length = len(tokenize_conversation(record_messages(record)[0], tiny_tokenizer, "vicuna_v1").input_ids)
    one = tmp_path / "one.json"
    one.write_text(json.dumps([record]))
    argv = [str(one), "--image-dir", str(files / "images"), "--max-length", str(length), "--num-image-tokens", "1"]
    for tokenizer in (tiny_ckpts["llama"], raw):
        assert check.main(argv + ["--tokenizer", str(tokenizer)]) == 0
        assert capsys.readouterr().out.splitlines() == [f"{one}: 1 records, 0 bad, 0 text-only, 0 truncated to model_max_length={length}"]


def test_check_without_tokenizer_skips_length_and_passes_good_files(files, capsys):
    assert check.main([str(files / "good.json"), "--image-dir", str(files / "images")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{files / 'good.json'}: 7 records, 0 bad, 1 text-only"]


def test_check_cli_errors(files, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    assert check.main([str(bad), "--image-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith(f"\nerror: {bad}: invalid JSON at line 1 column 3: Expecting property name enclosed in double quotes\n")
    with pytest.raises(SystemExit) as exit_:
        check.main([str(bad), "--image-dir", str(tmp_path), "--max-length", "8"])
    assert exit_.value.code == 2
    assert "the length check needs all of --tokenizer, --max-length and --num-image-tokens" in capsys.readouterr().err


def test_check_runs_as_a_module(files):
    run = subprocess.run([sys.executable, "-m", "vitsplit_vlm.data.check", str(files / "mixed.json"), "--image-dir",
                          str(files / "images")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "bad record roles (#1): bad roles" in run.stdout and "17 records, 9 bad, 1 text-only" in run.stdout


def _record(rid, answer="a"):
    return {"id": rid, "conversations": turns(("q", answer))}


@pytest.mark.parametrize("jsonl", [False, True])
def test_invalid_utf8_is_named_by_record_index(tmp_path, jsonl):
    records = [json.dumps(_record(f"r{i}")).encode() for i in range(3)]
    records[2] = records[2].replace(b'"a"', b'"caf\xe9"')  # Latin-1 e-acute: not UTF-8
    path = tmp_path / ("bad.jsonl" if jsonl else "bad.json")
    path.write_bytes(b"\n".join(records) if jsonl else b"[\n" + b",\n".join(records) + b"\n]")
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(DataFileError) as err:
        load_llava_json(path, cache_dir=tmp_path / "hf")
    assert str(err.value) == (f"{path}: record 2 is not valid UTF-8 (byte {offset}: invalid continuation byte); "
                              "save the file as UTF-8 or fix that record")


@pytest.mark.parametrize("content, message", [
    ('{"records": [{"id": 1}]}', "the file is one JSON object, not a list of records; a LLaVA data file is a JSON list"),
    ('{\n "id": "x",\n "image": "a.png"\n}\n', "the file is one JSON object, not a list of records; "),
    ('"hello"', "the file is a JSON str, not a list of records"),
])
def test_a_file_that_is_not_a_list_of_records_says_so(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(DataFileError, match=f"^{re.escape(f'{path}: {message}')}"):
        load_llava_json(path, cache_dir=tmp_path / "hf")


def test_skip_bad_samples_with_every_record_bad_says_no_record_is_left(tmp_path, tiny_tokenizer, processor):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_record("e1", " "), _record("e2", "")]))
    with pytest.raises(DataFileError) as err:
        LlavaDataset(path, tmp_path, tiny_tokenizer, processor, num_image_tokens=N_IMG, cache_dir=tmp_path / "hf",
                     skip_bad_samples=True)
    assert str(err.value) == (f"{path}: no usable record left: all 2 records are bad (the first, e1: empty answer in "
                              f"turn 1); list them with `python -m vitsplit_vlm.data.check {path} --image-dir {tmp_path}`")


def test_an_edit_that_keeps_size_and_mtime_is_not_served_from_the_cache(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_record("aaa")]))
    assert load_llava_json(path, cache_dir=tmp_path / "hf")["id"] == ["aaa"]
    stat = path.stat()
    path.write_text(json.dumps([_record("bbb")]))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert load_llava_json(path, cache_dir=tmp_path / "hf")["id"] == ["bbb"]
