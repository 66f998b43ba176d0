"""Chat session logic (vitsplit_vlm.chat) against a scripted fake model, and scripts/chat.py driven through a pty."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitsplit_vlm.chat import EMPTY_REPLY, ChatModel, ChatSession, GenerationSettings
from vitsplit_vlm.conversation import encode_prompt, expand_image_tokens

REPO = Path(__file__).resolve().parents[1]
WORDS = " the red circle is on the left"


class FakeModel:
    """Streams the tokens of WORDS like `generate` does; `lockstep` waits for the reader between tokens."""

    device = torch.device("cpu")
    dtype = torch.float32
    config = None  # no context window; the chat's cache stays empty, so every turn reads the whole prompt

    def __init__(self, tokenizer, lockstep: threading.Semaphore | None = None, fail: bool = False):
        self.reply = tokenizer(WORDS, add_special_tokens=False)["input_ids"]
        self.lockstep, self.fail = lockstep, fail
        self.generated = 0
        self.stopped = False
        self.calls: list[dict] = []  # the inputs and sampling flags of each generate call

    def generate(self, input_ids, streamer, stopping_criteria, **kwargs):
        self.calls.append({"input_ids": input_ids, **kwargs})
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
        return torch.cat([input_ids, torch.tensor([self.reply[:self.generated]])], dim=1)

    def _reader_took_it(self, input_ids, stopping_criteria) -> bool:
        """False once the stopping criteria fire; in lockstep, wait until the reader has the token or stops."""
        deadline = time.monotonic() + 10
        while not stopping_criteria(input_ids, None).all():
            if self.lockstep is None or self.lockstep.acquire(timeout=0.01):
                return True
            if time.monotonic() > deadline:
                raise TimeoutError("the reader did not receive the token just generated")
        return False


@pytest.fixture
def make_session(tiny_tokenizer, tiny_processor):
    def make(template: str = "vicuna_v1", **model_kwargs) -> ChatSession:
        return ChatSession(ChatModel(FakeModel(tiny_tokenizer, **model_kwargs), tiny_processor, template))

    return make


def _expected_ids(messages, tokenizer, template: str = "vicuna_v1") -> list[int]:
    """Training's ids for a prompt: encode_prompt's bos rule, <image> expanded to 4 tokens (28 px / 14 px patches)."""
    ids = encode_prompt(messages, tokenizer, template)
    return expand_image_tokens(ids, ids, tokenizer.convert_tokens_to_ids("<image>"), 4)[0]


def _generated_from(session: ChatSession, call: int = -1) -> tuple[list[int], torch.Tensor | None]:
    """The prompt ids and pixel_values the model's generate got."""
    inputs = session.chat_model.model.calls[call]
    return inputs["input_ids"][0].tolist(), inputs.get("pixel_values")


def _image(path: Path, mode: str = "RGB", size: tuple[int, int] = (37, 23)) -> Path:
    Image.new(mode, size).save(path)
    return path


def test_reply_streams_token_by_token_while_generation_runs(make_session):
    lockstep = threading.Semaphore(0)
    session = make_session(lockstep=lockstep)
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


def test_closing_the_stream_stops_generation_and_drops_the_turn(make_session):
    lockstep = threading.Semaphore(0)
    session = make_session(lockstep=lockstep)
    stream = session.ask("what is it?")
    next(stream)
    stream.close()  # what Ctrl-C or a cancelled web request does
    model = session.chat_model.model
    assert model.stopped and model.generated == 1
    assert session.messages == []


def test_generate_error_reaches_the_reader_and_history_is_unchanged(make_session):
    session = make_session(fail=True)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(session.ask("what is it?"))
    assert session.messages == []


def test_image_goes_in_first_user_turn_and_history_is_rendered_with_the_template(make_session, tiny_tokenizer, tmp_path):
    session = make_session()
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
    ids, pixel_values = _generated_from(session)
    assert ids == _expected_ids(expected, tiny_tokenizer)
    assert pixel_values.shape == (1, 3, 28, 28)  # any size in, the tower's size out
    assert _generated_from(session, 0)[1] is None
    assert session.chat_model.model.calls[-1].keys() >= {"attention_mask", "max_new_tokens", "do_sample", "temperature", "top_p"}


def test_swapping_a_seen_image_starts_a_new_conversation(make_session, tmp_path):
    session = make_session()
    session.set_image(_image(tmp_path / "a.png"))
    session.set_image(_image(tmp_path / "b.png", mode="L", size=(5, 900)))  # not seen yet: nothing to reset
    list(session.ask("what colour?"))
    message = session.set_image(_image(tmp_path / "c.png", mode="RGBA"))
    assert message.endswith("Started a new conversation: the model sees one image per conversation.")
    assert session.messages == [] and session.image.mode == "RGB"
    list(session.ask("and now <image>?"))  # a typed placeholder is dropped: one image, one run of image tokens
    list(session.ask("<image>"))
    image_id = session.chat_model.processor.image_token_id
    assert _generated_from(session)[0].count(image_id) == 4
    assert [m["content"] for m in session.messages[::2]] == ["and now ?", ""]


def test_bad_image_keeps_the_session(make_session, tmp_path):
    session = make_session()
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


def test_reset_clears_history_and_image(make_session, tmp_path):
    session = make_session()
    session.set_image(_image(tmp_path / "a.png"))
    list(session.ask("what colour?"))
    session.reset()
    assert session.messages == [] and session.image is None
    list(session.ask("hello"))
    assert _generated_from(session)[1] is None


def test_plain_template_renders_each_question_alone_with_the_image(make_session, tiny_tokenizer, tmp_path):
    session = make_session(template="plain")
    session.set_image(_image(tmp_path / "a.png"))
    list(session.ask("describe"))
    list(session.ask("again"))
    assert _generated_from(session)[0] == _expected_ids([{"role": "user", "content": "<image>\nagain"}], tiny_tokenizer, "plain")
    assert len(session.messages) == 4 and session.image_turn is None


def test_sampling_flags():
    assert GenerationSettings(7, temperature=0).generate_kwargs() == {"max_new_tokens": 7, "do_sample": False}
    assert GenerationSettings(7, 0.5, 0.9).generate_kwargs() == {"max_new_tokens": 7, "do_sample": True, "temperature": 0.5, "top_p": 0.9}
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)


def test_load_takes_the_template_the_checkpoint_records(tiny_vlm_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_vlm_dir, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "conversation_template": "plain"}))
    assert ChatModel.load(checkpoint, device="cpu").template == "plain"
    assert ChatModel.load(checkpoint, device="cpu", template="vicuna_v1").template == "vicuna_v1"
    assert ChatModel.load(tiny_vlm_dir, device="cpu").template == "vicuna_v1"
    with pytest.raises(FileNotFoundError, match="no config.json; pass a directory written by save_pretrained"):
        ChatModel.load(tmp_path, device="cpu")

class Terminal:
    """A child process on a pseudo-terminal (what a user's shell gives it), read with deadlines."""

    def __init__(self, argv: list[str], cwd: Path):
        master, slave = os.openpty()
        env = {**os.environ, "TERM": "dumb", "HF_HUB_OFFLINE": "1"}  # dumb: no escape sequences from readline
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True)
        os.close(slave)
        self.fd = master
        self.output = ""  # everything read so far
        self.seen = 0  # where the next expect starts looking

    def expect(self, text: str, timeout: float = 30) -> str:
        """Output up to and including ``text``; fails with the whole transcript when it does not come."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, self.seen)) < 0:
            left = deadline - time.monotonic()
            ready = left > 0 and select.select([self.fd], [], [], left)[0]
            try:
                data = os.read(self.fd, 4096) if ready else b""
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data:
                pytest.fail(f"no {text!r} in the terminal ({'timed out' if left <= 0 else 'process ended'}):\n{self.output}")
            self.output += data.decode(errors="replace").replace("\r\n", "\n")
        start, self.seen = self.seen, found + len(text)
        return self.output[start:self.seen]

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def close(self) -> int | None:
        """Exit code if the child ended within 10 s, else None (then it is killed)."""
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
        finally:
            os.close(self.fd)


def _assert_replies(terminal: Terminal, question: str) -> None:
    terminal.send(question)
    terminal.expect("ASSISTANT> ")
    reply = terminal.expect("\nUSER> ").removesuffix("\nUSER> ")
    assert reply.strip() and EMPTY_REPLY not in reply, terminal.output


def test_terminal_chat_commands_and_bad_images(tiny_chat_vlm_dir, tmp_path):
    Image.new("RGBA", (50, 70), (0, 0, 255, 255)).save(tmp_path / "good.png")
    terminal = Terminal([sys.executable, str(REPO / "scripts/chat.py"), "--model", str(tiny_chat_vlm_dir), "--max-new-tokens", "5"], tmp_path)
    try:
        assert "(template vicuna_v1). Commands: /image PATH, /reset, /quit." in terminal.expect("USER> ", timeout=60)
        _assert_replies(terminal, "what is there?")
        terminal.send("/image missing.png")
        assert "Could not open image missing.png: No such file or directory. Still using no image." in terminal.expect("USER> ")
        terminal.send("/image good.png")
        assert "Loaded image good.png (50x70)." in terminal.expect("USER> ")
        _assert_replies(terminal, "what colour is it?")
        terminal.send("/image 'good.png'")
        assert "Started a new conversation: the model sees one image per conversation." in terminal.expect("USER> ")
        terminal.send("/reset")
        assert "Conversation and image cleared." in terminal.expect("USER> ")
        terminal.send("/quit")
    finally:
        code = terminal.close()
    assert code == 0, terminal.output
