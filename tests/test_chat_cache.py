"""The chat keeps its key/value cache: a turn prefills only what follows the cached prefix, and replies equal
those of a session that re-reads the whole conversation every turn (the oracle: `reuse_cache=False`)."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitsplit_vlm.chat import ChatModel, ChatSession, GenerationSettings

QUESTIONS = ["what is in the picture?", "what colour is it?", "and the shape on the left?", "how many are there?"]


@pytest.fixture(scope="module")
def chat_model(tiny_chat_vlm_dir):
    return ChatModel.load(tiny_chat_vlm_dir, device="cpu", dtype="float32", settings=GenerationSettings(6, temperature=0))


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(paths[-1])
    return paths


class Prefills:
    """Tokens fed to the LM by the first forward of each turn, and images seen by the vision module."""

    def __init__(self, model):
        self.lengths, self.images, self.new_turn = [], 0, False
        self.handles = [
            model.language_model.register_forward_pre_hook(self._lm, with_kwargs=True),
            model.vision.register_forward_pre_hook(self._vision),
        ]

    def _lm(self, module, args, kwargs):
        if self.new_turn:
            self.lengths.append(kwargs["inputs_embeds"].shape[1])
            self.new_turn = False

    def _vision(self, module, args):
        self.images += args[0].shape[0]

    def close(self):
        for handle in self.handles:
            handle.remove()


def _prompt_ids(session: ChatSession, text: str) -> list[int]:
    turns, _ = session.prompt_messages(text)
    return session.chat_model.processor.prompt_ids([turns], session.chat_model.template)[0]


def _prompt_len(session: ChatSession, text: str) -> int:
    return len(_prompt_ids(session, text))


def _common_len(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_cached_turns_prefill_only_the_new_tokens_and_reply_as_a_full_reprefill(chat_model, pictures):
    cached, fresh = ChatSession(chat_model), ChatSession(chat_model, reuse_cache=False)
    for session in (cached, fresh):
        session.set_image(pictures[0])
    prefills = Prefills(chat_model.model)
    try:
        for turn, question in enumerate(QUESTIONS):
            prompt = _prompt_ids(cached, question)
            # Cached: the previous prompt and reply. The reply's text, as the history renders it, may tokenise
            # to other ids than the model generated (a random model's replies often do): the cache is used up
            # to where the ids part, which is never before the end of the previous prompt.
            reused = _common_len(cached.cache.ids, prompt)
            if turn:
                assert reused >= previous_len
            prefills.new_turn = True
            reply = "".join(cached.ask(question))
            assert prefills.lengths[-1] == len(prompt) - reused
            prefills.new_turn = True
            assert "".join(fresh.ask(question)) == reply, f"turn {turn}"
            assert prefills.lengths[-1] == len(prompt)
            previous_len = len(prompt)
    finally:
        prefills.close()
    assert prefills.images == 1 + len(QUESTIONS)  # once for the cached session, every turn for the other
    assert cached.messages == fresh.messages


def test_a_new_image_and_reset_drop_the_cache(chat_model, pictures):
    session, oracle = ChatSession(chat_model), ChatSession(chat_model, reuse_cache=False)
    session.set_image(pictures[0])
    "".join(session.ask(QUESTIONS[0]))
    assert session.cache.ids
    session.set_image(pictures[1])  # image tokens have the same ids for any picture: the cache must go
    assert session.cache.cache is None and session.cache.ids == []
    oracle.set_image(pictures[1])
    assert "".join(session.ask(QUESTIONS[1])) == "".join(oracle.ask(QUESTIONS[1]))
    session.reset()
    assert session.cache.cache is None and session.cache.ids == []


def test_a_conversation_past_the_context_window_gets_a_message_and_a_way_on(chat_model, pictures, monkeypatch):
    session = ChatSession(chat_model)
    session.set_image(pictures[0])
    first = _prompt_len(session, QUESTIONS[0])
    text_config = chat_model.model.config.text_config
    monkeypatch.setattr(text_config, "max_position_embeddings", first + 3)
    reply = "".join(session.ask(QUESTIONS[0]))  # room for 3 of the 6 new tokens
    note = f" [The reply stopped at the model's context window of {first + 3} tokens: /reset to start a new conversation (then /image to load a picture again).]"
    assert reply.endswith(note)
    assert session.messages[1]["content"] == reply.removesuffix(note).strip()  # the note is not history
    assert len(session.cache.ids) + 1 == first + 3
    second = _prompt_len(session, QUESTIONS[1])
    assert "".join(session.ask(QUESTIONS[1])) == (
        f"[This conversation would need {second} tokens before the reply, past the model's context window of "
        f"{first + 3}: /reset to start a new conversation (then /image to load a picture again).]"
    )
    assert len(session.messages) == 2  # the turn that did not fit is not kept
    session.reset()
    session.set_image(pictures[0])
    assert len("".join(session.ask("what?"))) > 0
    assert len(session.messages) == 2
