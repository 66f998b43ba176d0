"""Chat in the terminal with a ViT-Split LLaVA checkpoint, the reply streamed as it is generated.

    vitsplit-chat --model DIR [--image PATH] [--temperature 0] [--max-new-tokens 256]
    python scripts/chat.py --model DIR                           # the same, from a clone

Commands: /image PATH loads or swaps the image, /reset forgets the conversation and the image, /quit (or Ctrl-D)
leaves. Ctrl-C during a reply stops it.
"""
from __future__ import annotations

import argparse
import contextlib
import gc

from .chat import COMMANDS_HELP, EMPTY_REPLY, ChatSession, add_model_args, chat_model_from_args

with contextlib.suppress(ImportError):  # line editing and history where the platform has it
    import readline  # noqa: F401


def handle_command(session: ChatSession, line: str) -> str | None:
    """Run a /command; returns the message to print, or None for /quit."""
    name, _, arg = line.partition(" ")
    if name == "/quit":
        return None
    if name == "/reset":
        session.reset()
        return "Conversation and image cleared."
    if name == "/image":
        path = arg.strip().strip("'\"")  # terminals quote dropped-in paths
        return session.set_image(path) if path else "Usage: /image PATH"
    return f"Unknown command {name}. {COMMANDS_HELP}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--image", help="image to start with")
    args = parser.parse_args(argv)
    chat_model = chat_model_from_args(parser, args)
    # The model and the libraries live as long as the process: moved out of the collector's sight, they are not
    # re-scanned by every collection, and /quit does not wait seconds for the final collection at exit.
    gc.freeze()
    session = ChatSession(chat_model)
    print(f"Loaded {args.model} (template {chat_model.template}). {COMMANDS_HELP}", flush=True)
    if args.image:
        print(session.set_image(args.image), flush=True)
    while True:
        try:
            line = input("USER> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line.startswith("/"):
            message = handle_command(session, line)
            if message is None:
                return 0
            print(message, flush=True)
        elif line:
            print("ASSISTANT> ", end="", flush=True)
            try:
                replied = False
                for chunk in session.ask(line):
                    print(chunk, end="", flush=True)
                    replied = True
                if not replied:
                    print(EMPTY_REPLY, end="")
            except KeyboardInterrupt:
                print(" [stopped; this turn is not kept]", end="")
            print(flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
