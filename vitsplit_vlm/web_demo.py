"""A Gradio page to chat about an image with a ViT-Split LLaVA checkpoint (needs the `demo` extra: gradio).

    vitsplit-web-demo --model DIR [--port 7860] [--host 127.0.0.1] [--share]
    python scripts/web_demo.py --model DIR                       # the same, from a clone

Served on 127.0.0.1 unless --host says otherwise; --share (a public gradio.live link) is off by default. Each
browser tab has its own conversation; replies stream as they are generated, one at a time across tabs. The page has
example images with questions (`vitsplit_vlm.demo_examples`), sampling controls (temperature, top-p, max new tokens;
the command-line flags set their start values) and a Stop button.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

try:
    import gradio as gr
except ImportError as exc:  # an optional extra: say how to get it
    raise SystemExit(f"the web demo needs gradio ({exc}): pip install 'vitsplit_vlm[demo]'") from exc

from .chat import EMPTY_REPLY, ChatModel, ChatSession, GenerationSettings, add_model_args, chat_model_from_args
from .conversation import Message
from .demo_examples import examples

# System fonts only: the default theme fetches Google Fonts, which hangs pages on offline machines.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
Outputs = tuple[str, list[Message], str, ChatSession]


def build_demo(chat_model: ChatModel) -> gr.Blocks:
    """Image + chat; the page shows the session's own history, so a reset by an image swap is what you see."""

    def respond(
        text: str, image_path: str | None, session: ChatSession | None, temperature: float, top_p: float, max_new_tokens: float
    ) -> Iterator[Outputs]:
        session = session or ChatSession(chat_model)
        # This request's sampling: a copy of the ChatModel sharing the loaded model, so tabs don't change each other's.
        session.chat_model = replace(chat_model, settings=GenerationSettings(int(max_new_tokens), temperature, top_p))
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

    settings = chat_model.settings
    with gr.Blocks(title="ViT-Split LLaVA chat", analytics_enabled=False) as demo:
        session = gr.State(None)
        gr.Markdown(f"### ViT-Split LLaVA chat (template `{chat_model.template}`)")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image")
                with gr.Accordion("Sampling", open=True):
                    temperature = gr.Slider(0, 1.5, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1, value=settings.top_p, step=0.05, label="Top-p", elem_id="top_p")
                    max_new_tokens = gr.Slider(1, max(1024, settings.max_new_tokens), value=settings.max_new_tokens, step=1,
                                               label="Max new tokens", elem_id="max_new_tokens")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", elem_id="chatbot")
                notice = gr.Markdown(elem_id="notice")
                question = gr.Textbox(label="Question", show_label=False, placeholder="Ask about the image, then Enter",
                                      elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_button = gr.Button("Clear", elem_id="clear")
                # Filling the inputs only: the user still presses Send (an image the model sees is a user's choice).
                gr.Examples(examples(), [image, question], label="Examples (shapes like those the demo model learned)",
                            elem_id="examples")
        inputs = [question, image, session, temperature, top_p, max_new_tokens]
        reply = gr.on([send.click, question.submit], respond, inputs, [question, chatbot, notice, session])
        stop.click(None, None, None, cancels=[reply])  # closing the stream stops generate; the partial turn is dropped
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
