"""A Gradio page to chat about an image with a ViT-Split LLaVA checkpoint (needs the `demo` extra: gradio).

    vitsplit-web-demo --model DIR [--port 7860] [--host 127.0.0.1] [--share]
    python scripts/web_demo.py --model DIR                       # the same, from a clone

Served on 127.0.0.1 unless --host says otherwise; --share (a public gradio.live link) is off by default. Each
browser tab has its own conversation; replies stream as they are generated, one at a time across tabs.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

try:
    import gradio as gr
except ImportError as exc:  # an optional extra: say how to get it
    raise SystemExit(f"the web demo needs gradio ({exc}): pip install 'vitsplit_vlm[demo]'") from exc

from .chat import EMPTY_REPLY, ChatModel, ChatSession, add_model_args, chat_model_from_args
from .conversation import Message

# System fonts only: the default theme fetches Google Fonts, which hangs pages on offline machines.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
Outputs = tuple[str, list[Message], str, ChatSession]


def build_demo(chat_model: ChatModel) -> gr.Blocks:
    """Image + chat; the page shows the session's own history, so a reset by an image swap is what you see."""

    def respond(text: str, image_path: str | None, session: ChatSession | None) -> Iterator[Outputs]:
        session = session or ChatSession(chat_model)
        notice = ""
        if image_path != session.image_path:  # the image is synced on send: one event, no race with the upload
            if image_path:
                notice = session.set_image(image_path, label=Path(image_path).name)  # not gradio's cache path
            else:
                session.reset()
                notice = "Image removed: started a new conversation."
        question = text.strip()
        if not question:
            yield "", session.messages, notice, session
            return
        history = list(session.messages)

        def view(reply: str) -> list[Message]:
            return [*history, {"role": "user", "content": question}, {"role": "assistant", "content": reply}]

        reply = ""
        yield "", view(reply), notice, session
        with closing(session.ask(question)) as stream:  # a cancelled request stops generation at once
            for chunk in stream:
                reply += chunk
                yield "", view(reply), notice, session
        if not reply:
            yield "", view(EMPTY_REPLY), notice, session

    def clear() -> tuple[str, None, list[Message], str, None]:
        return "", None, [], "", None

    with gr.Blocks(title="ViT-Split LLaVA chat", analytics_enabled=False) as demo:
        session = gr.State(None)
        gr.Markdown(f"### ViT-Split LLaVA chat (template `{chat_model.template}`)")
        with gr.Row():
            image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", elem_id="chatbot")
                notice = gr.Markdown(elem_id="notice")
                question = gr.Textbox(show_label=False, placeholder="Ask about the image, then Enter", elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear_button = gr.Button("Clear", elem_id="clear")
        reply = gr.on([send.click, question.submit], respond, [question, image, session], [question, chatbot, notice, session])
        for event in (clear_button.click, chatbot.clear):  # the chatbot's own trash icon resets the session too
            event(clear, None, [question, image, chatbot, notice, session], cancels=[reply])
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    demo = build_demo(chat_model_from_args(parser, args))
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, theme=THEME)


if __name__ == "__main__":
    main()
