"""scripts/web_demo.py end to end: the real server on a loopback port, driven by headless Chromium.

Chromium is driven through Debian's chromedriver with the W3C WebDriver protocol (plain HTTP + JSON, a few lines
of urllib), so the test needs nothing beyond gradio and the two Debian packages `.ci/install_chromium.sh` installs.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image

from vitsplit_vlm.chat import EMPTY_REPLY, ChatModel, ChatSession, GenerationSettings
from vitsplit_vlm.demo_examples import EXAMPLES_DIR

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [  # gradio is only looked up: the server runs it in its own process
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio is not installed: pip install -e '.[demo]'"),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver not installed: run .ci/install_chromium.sh (Debian)"
    ),
]

REPO = Path(__file__).resolve().parents[1]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CHROMIUM_FLAGS = [  # headless as root in a container, and nothing that phones home (it would hang offline)
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900",
]
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _poll(what: str, check: Callable[[], T | None], timeout: float, on_timeout: Callable[[], str] = str) -> T:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}. {on_timeout()}")


class WebDriver:
    """The handful of W3C WebDriver commands the test needs, against a chromedriver on ``port``."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data, {"Content-Type": "application/json"}, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["value"]

    def start(self, user_data_dir: Path) -> None:
        options = {"binary": CHROMIUM, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"]}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.session = "/session/" + self.call("POST", "/session", {"capabilities": capabilities})["sessionId"]

    def find(self, css: str, timeout: float = 15) -> str:
        def attempt() -> str | None:
            try:
                return self.call("POST", self.session + "/element", {"using": "css selector", "value": css})[ELEMENT]
            except urllib.error.HTTPError:  # no such element (yet)
                return None

        return _poll(f"element {css!r}", attempt, timeout)

    def send_keys(self, css: str, text: str) -> None:
        """Types into a field; for an <input type=file> this uploads the file at path ``text``."""
        self.call("POST", f"{self.session}/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.call("POST", f"{self.session}/element/{self.find(css)}/click", {})

    def replace_text(self, css: str, text: str) -> None:
        """Clears a field and types ``text`` then Tab (a gradio number box takes its value on blur)."""
        element = self.find(css)
        self.call("POST", f"{self.session}/element/{element}/clear", {})
        self.call("POST", f"{self.session}/element/{element}/value", {"text": text + "\ue004"})

    def script(self, js: str) -> Any:
        return self.call("POST", self.session + "/execute/sync", {"script": js, "args": []})


@contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A background process that is always killed, its output in ``log``."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def _browser(tmp_path: Path) -> Iterator[WebDriver]:
    port = _free_port()
    with _process([CHROMEDRIVER, f"--port={port}"], tmp_path / "chromedriver.log"):
        driver = WebDriver(port)
        _poll("chromedriver", lambda: _reachable(driver.base + "/status"), 15)
        driver.start(tmp_path / "chromium-profile")
        try:
            yield driver
        finally:
            driver.call("DELETE", driver.session)  # quits chromium


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_upload_ask_see_the_answer_and_clear(tiny_chat_vlm_dir, tmp_path):
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    argv = [sys.executable, "scripts/web_demo.py", "--model", str(tiny_chat_vlm_dir), "--port", str(port), "--max-new-tokens", "8"]
    server_log = tmp_path / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with _process(argv, server_log, env) as server, _browser(tmp_path) as browser:  # both start at once
        _poll(f"the server at {url}", lambda: server.poll() is not None or _reachable(url), 300, lambda: server_log.read_text()[-3000:])
        assert server.poll() is None, f"the server exited with {server.returncode}:\n{server_log.read_text()[-3000:]}"
        browser.call("POST", browser.session + "/url", {"url": url})
        browser.send_keys("#image input[type=file]", str(tmp_path / "red.png"))
        browser.find("#image img")  # the upload reached the server and the preview shows
        browser.send_keys("#question textarea", "What colour is the picture?")
        browser.click("#send")
        last_bot = "const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]'); return m.length ? m[m.length - 1].innerText.trim() : '';"
        answer = _poll("a non-empty answer", lambda: browser.script(last_bot), 30, lambda: server_log.read_text()[-3000:])
        assert answer != EMPTY_REPLY
        assert "What colour is the picture?" in browser.script("return document.querySelector('#chatbot').innerText;")
        notice = "return document.querySelector('#notice').innerText.trim();"
        _poll("the notice 'Loaded image red.png (64x48).'", lambda: browser.script(notice) == "Loaded image red.png (64x48).", 30,
              lambda: f"the notice reads {browser.script(notice)!r}")
        shot = tmp_path / "web_demo.png"
        shot.write_bytes(base64.b64decode(browser.call("GET", browser.session + "/screenshot")))
        browser.click("#clear")
        cleared = "return !document.querySelector('#chatbot [data-testid=\"bot\"]') && !document.querySelector('#image img');"
        _poll("Clear to empty the chat and the image", lambda: browser.script(cleared), 15)
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 24)) > 16  # a rendered page, not a blank one


def _greedy_reply(model_dir: Path, image: Path, question: str, max_new_tokens: int) -> str:
    """The oracle: the same checkpoint answered in this process with greedy decoding."""
    session = ChatSession(ChatModel.load(model_dir, settings=GenerationSettings(max_new_tokens, 0.0, 1.0)))
    session.set_image(image)
    return "".join(session.ask(question)).strip() or EMPTY_REPLY


def test_example_click_with_the_sampling_controls(tiny_chat_vlm_dir, tmp_path):
    """An example fills the image and the question; the sliders set this request's decoding (greedy, 2 tokens,
    where the server was started sampling 8), so the page answers exactly what greedy decoding answers here."""
    question = "What color is the circle?"
    expected = _greedy_reply(tiny_chat_vlm_dir, EXAMPLES_DIR / "two_shapes.png", question, 2)
    assert expected != _greedy_reply(tiny_chat_vlm_dir, EXAMPLES_DIR / "two_shapes.png", question, 8)  # 2 tokens tell
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    argv = [sys.executable, "scripts/web_demo.py", "--model", str(tiny_chat_vlm_dir), "--port", str(port), "--max-new-tokens", "8",
            "--temperature", "1.0"]
    server_log = tmp_path / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with _process(argv, server_log, env) as server, _browser(tmp_path) as browser:
        _poll(f"the server at {url}", lambda: server.poll() is not None or _reachable(url), 300, lambda: server_log.read_text()[-3000:])
        assert server.poll() is None, f"the server exited with {server.returncode}:\n{server_log.read_text()[-3000:]}"
        browser.call("POST", browser.session + "/url", {"url": url})
        browser.click('#examples [data-testid="dataset-cell-0-0"]')
        browser.find("#image img")  # the example image is in the input
        typed = "return document.querySelector('#question textarea').value;"
        assert _poll("the example question", lambda: browser.script(typed), 15) == question
        browser.replace_text("#temperature input[type=number]", "0")
        browser.replace_text("#max_new_tokens input[type=number]", "2")
        browser.click("#send")
        last_bot = "const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]'); return m.length ? m[m.length - 1].innerText.trim() : '';"
        notice = "return document.querySelector('#notice').innerText.trim();"
        loaded = "Loaded image two_shapes.png (168x168)."
        # While the request runs, Gradio shows its progress text ("processing | 0.0s") in the notice's place.
        _poll(f"the notice {loaded!r}", lambda: browser.script(notice) == loaded, 30,
              lambda: f"the notice reads {browser.script(notice)!r}. {server_log.read_text()[-3000:]}")
        _poll("the greedy 2-token answer", lambda: browser.script(last_bot) == expected, 30,
              lambda: f"page shows {browser.script(last_bot)!r}, expected {expected!r}")
        (tmp_path / "web_demo_example.png").write_bytes(base64.b64decode(browser.call("GET", browser.session + "/screenshot")))
    with Image.open(tmp_path / "web_demo_example.png") as image:
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 24)) > 16
