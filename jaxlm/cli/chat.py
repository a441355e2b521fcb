"""`jaxlm generate --chat`: a conversation with an instruct model, its chat template applied.

Each --prompt is a user turn (in order); without --prompt (or with --interactive) turns are read
from stdin, one per line, until end of input. The history is kept: every reply is added as the
assistant's message before the next turn. Replies stream to stdout, one line each.
"""

from __future__ import annotations

import sys

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError


def add_chat_args(p) -> None:
    p.add_argument("--chat", action="store_true",
                   help="chat: each --prompt (or stdin line) is a user turn, formatted by the model's chat template, "
                        "with the history kept; replies stop at the end of the turn")
    p.add_argument("--system", default=None, metavar="TEXT", help="system message that opens the --chat conversation")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="Jinja chat template file to use instead of the model's (bundled:chat/script.jinja works)")


def read_template(path: str | None) -> str | None:
    """The text of a --chat-template file, checked here so that its problems are blamed on the file."""
    # lazy: keeps `jaxlm --help` fast (jinja2 loads with the template)
    from jaxlm.tokenizer.chat_template import compile_template

    if path is None:
        return None
    p = resolve_path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "is not a regular file" if p.exists() else "does not exist"
        raise JaxlmError(f"chat template file {path} {what}; give a Jinja file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JaxlmError(f"chat template file {path} is not UTF-8 text") from None
    if "{{" not in text and "{%" not in text:
        raise JaxlmError(f"chat template file {path} holds no Jinja ({{{{ ... }}}} or {{% ... %}}); give a chat "
                         f"template")
    compile_template(text, origin=f"chat template file {path}")
    return text


def run_chat(lm, args, sampling: dict) -> int:
    # lazy: keeps `jaxlm --help` fast (jaxlm.inference loads JAX)
    from jaxlm.inference.chat import template_of

    template = template_of(lm.tokenizer, read_template(args.chat_template))  # no template: the error comes now
    messages = [{"role": "system", "content": args.system}] if args.system else []

    def turn(text: str, keep_going: bool) -> None:
        messages.append({"role": "user", "content": text})
        reply = ""
        try:
            for piece in lm.stream_chat(messages, args.max_new_tokens, chat_template=template, **sampling):
                print(piece, end="", flush=True)
                reply += piece
        except JaxlmError as e:
            messages.pop()
            if not keep_going:
                raise
            print(f"error: {e}", file=sys.stderr)  # one bad turn should not end the session
            return
        print()
        messages.append({"role": "assistant", "content": reply})

    for prompt in args.prompt:
        turn(prompt, keep_going=False)
    if args.interactive or not args.prompt:
        print("chat: enter a message per line; end with Ctrl-D", file=sys.stderr)
        for line in sys.stdin:
            if line.strip():
                turn(line.rstrip("\n"), keep_going=True)
    return 0
