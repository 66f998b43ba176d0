"""Chat session logic (vitsplit_vlm.chat) against a scripted fake model, and scripts/chat.py driven through a pty."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

from vitsplit_vlm.chat import ChatModel, ChatSession, GenerationSettings
from vitsplit_vlm.conversation import render_prompt

WORDS = " the red circle is on the left"


class FakeProcessor:
    """Tokenises the rendered prompt and records what it was called with."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls: list[tuple[str, list | None]] = []

    def __call__(self, text: str, images=None, return_tensors: str = "pt") -> BatchFeature:
        self.calls.append((text, images))
        return BatchFeature({"input_ids": torch.tensor([self.tokenizer(text)["input_ids"]])})


class FakeModel:
    """Streams the tokens of WORDS like `generate` does; `lockstep` waits for the reader between tokens."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, tokenizer, lockstep: threading.Semaphore | None = None, fail: bool = False):
        self.reply = tokenizer(WORDS, add_special_tokens=False)["input_ids"]
        self.lockstep, self.fail = lockstep, fail
        self.generated = 0
        self.stopped = False
        self.kwargs: dict = {}

    def generate(self, input_ids, streamer, stopping_criteria, **kwargs):
        self.kwargs = kwargs
        streamer.put(input_ids)  # the prompt, as generate does; skipped by the streamer
        for token in self.reply:
            if self.fail:
                raise RuntimeError("out of memory")
            self.generated += 1
            streamer.put(torch.tensor([token]))
            if not self._reader_took_it(input_ids, stopping_criteria):
                self.stopped = True
                break
        streamer.end()

    def _reader_took_it(self, input_ids, stopping_criteria) -> bool:
        """False once the stopping criteria fire; in lockstep, wait until the reader has the token or stops."""
        deadline = time.monotonic() + 10
        while not stopping_criteria(input_ids, None).all():
            if self.lockstep is None or self.lockstep.acquire(timeout=0.01):
                return True
            if time.monotonic() > deadline:
                raise TimeoutError("the reader did not receive the token just generated")
        return False


@pytest.fixture(scope="module")
def tokenizer(tiny_ckpts):
    return AutoTokenizer.from_pretrained(tiny_ckpts["llama"])


def _session(tokenizer, template: str = "vicuna_v1", **model_kwargs) -> ChatSession:
    return ChatSession(ChatModel(FakeModel(tokenizer, **model_kwargs), FakeProcessor(tokenizer), template))


def _image(path: Path, mode: str = "RGB", size: tuple[int, int] = (37, 23)) -> Path:
    Image.new(mode, size).save(path)
    return path


def test_reply_streams_token_by_token_while_generation_runs(tokenizer):
    lockstep = threading.Semaphore(0)
    session = _session(tokenizer, lockstep=lockstep)
    model = session.chat_model.model
    generated_at_chunk = []
    chunks = []
    for chunk in session.ask("what is it?"):
        chunks.append(chunk)
        generated_at_chunk.append(model.generated)
        lockstep.release()
    # Each chunk arrived while generation was blocked right after the token it holds: nothing was buffered.
    assert generated_at_chunk == list(range(1, len(model.reply) + 1))
    assert "".join(chunks).strip() == WORDS.strip()
    assert session.messages == [{"role": "user", "content": "what is it?"}, {"role": "assistant", "content": WORDS.strip()}]


def test_closing_the_stream_stops_generation_and_drops_the_turn(tokenizer):
    lockstep = threading.Semaphore(0)
    session = _session(tokenizer, lockstep=lockstep)
    stream = session.ask("what is it?")
    next(stream)
    stream.close()  # what Ctrl-C or a cancelled web request does
    model = session.chat_model.model
    assert model.stopped and model.generated == 1
    assert session.messages == []


def test_generate_error_reaches_the_reader_and_history_is_unchanged(tokenizer):
    session = _session(tokenizer, fail=True)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(session.ask("what is it?"))
    assert session.messages == []


def test_image_goes_in_first_user_turn_and_history_is_rendered_with_the_template(tokenizer, tmp_path):
    session = _session(tokenizer)
    processor = session.chat_model.processor
    list(session.ask("hello"))  # text-only turn: no image yet
    assert session.set_image(_image(tmp_path / "a.png")) == f"Loaded image {tmp_path / 'a.png'} (37x23)."
    assert len(session.messages) == 2  # loading the first image keeps the text-only history
    list(session.ask("what colour?"))
    list(session.ask("and the shape?"))
    expected = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": WORDS.strip()},
        {"role": "user", "content": "<image>\nwhat colour?"},
        {"role": "assistant", "content": WORDS.strip()},
        {"role": "user", "content": "and the shape?"},
    ]
    prompt, images = processor.calls[-1]
    assert prompt == render_prompt(expected, tokenizer, "vicuna_v1")
    assert prompt.count("<image>") == 1 and len(images) == 1 and images[0].mode == "RGB"
    assert processor.calls[0][1] is None


def test_swapping_a_seen_image_starts_a_new_conversation(tokenizer, tmp_path):
    session = _session(tokenizer)
    session.set_image(_image(tmp_path / "a.png"))
    session.set_image(_image(tmp_path / "b.png", mode="L", size=(5, 900)))  # not seen yet: nothing to reset
    list(session.ask("what colour?"))
    message = session.set_image(_image(tmp_path / "c.png", mode="RGBA"))
    assert message.endswith("Started a new conversation: the model sees one image per conversation.")
    assert session.messages == [] and session.image.mode == "RGB"
    list(session.ask("and now?"))
    assert session.chat_model.processor.calls[-1][0].count("<image>") == 1


def test_bad_image_keeps_the_session(tokenizer, tmp_path):
    session = _session(tokenizer)
    missing = tmp_path / "missing.png"
    assert session.set_image(missing) == f"Could not open image {missing}: No such file or directory. Still using no image."
    good = _image(tmp_path / "good.png")
    session.set_image(good)
    list(session.ask("what colour?"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    message = session.set_image(tmp_path / "broken.png")
    assert message.startswith(f"Could not open image {tmp_path / 'broken.png'}: cannot identify image file")
    assert message.endswith(f". Still using {good}.")
    assert session.image_path == str(good) and len(session.messages) == 2


def test_reset_clears_history_and_image(tokenizer, tmp_path):
    session = _session(tokenizer)
    session.set_image(_image(tmp_path / "a.png"))
    list(session.ask("what colour?"))
    session.reset()
    assert session.messages == [] and session.image is None
    list(session.ask("hello"))
    assert session.chat_model.processor.calls[-1][1] is None


def test_plain_template_renders_each_question_alone_with_the_image(tokenizer, tmp_path):
    session = _session(tokenizer, template="plain")
    session.set_image(_image(tmp_path / "a.png"))
    list(session.ask("describe"))
    list(session.ask("again"))
    assert session.chat_model.processor.calls[-1][0] == "<image>"
    assert len(session.messages) == 4 and session.image_turn is None


def test_sampling_flags():
    assert GenerationSettings(7, temperature=0).generate_kwargs() == {"max_new_tokens": 7, "do_sample": False}
    assert GenerationSettings(7, 0.5, 0.9).generate_kwargs() == {"max_new_tokens": 7, "do_sample": True, "temperature": 0.5, "top_p": 0.9}
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)
