"""Chat with an instruct model: its chat template applied as transformers' `apply_chat_template`
applies it (jaxlm.tokenizer.chat_template), generation stopping at the end of the turn.

    lm = jaxlm.load("jx/llama-3-instruct")
    lm.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}])
    for piece in lm.stream_chat(messages): print(piece, end="")

The prompt ids are those of `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`:
the rendered text is encoded with its special-token strings as their ids and no BOS added (the
template writes `bos_token` itself). A turn ends at any of: the template's end-of-turn tokens
(`<|eot_id|>`, `<|end|>`, ... that it writes), the eos ids of the model's generation_config.json
(kept by `jaxlm convert from-hf`), and the tokenizer's eos.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError
from jaxlm.inference import checks
from jaxlm.tokenizer.chat_template import end_of_turn_ids, render_chat


def template_source(chat_template) -> str | None:
    """chat_template as Jinja text: the text itself (it has `{{` or `{%`), or the file a path names
    (a pathlib.Path, or a str without Jinja markup; `bundled:chat/script.jinja` works). None stays None."""
    if chat_template is None:
        return None
    if isinstance(chat_template, str) and ("{{" in chat_template or "{%" in chat_template):
        return chat_template
    return read_template_file(checks.path("chat_template", chat_template))


def read_template_file(path: str | os.PathLike) -> str:
    """A chat template file's text (bundled: paths resolved), or a JaxlmError naming the problem."""
    p = resolve_path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "is not a regular file (a FIFO, socket or " \
            "device)" if p.exists() else "does not exist"
        raise checks.ArgumentValueError(f"chat template file {path} {what}; give a Jinja file, or the template "
                                        f"text itself (with {{{{ or {{%)")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JaxlmError(f"chat template file {path} is not UTF-8 text") from None


def template_of(tokenizer, chat_template: str | None = None) -> str:
    template = template_source(chat_template) if chat_template is not None else tokenizer.chat_template
    if not template:
        raise JaxlmError("this model has no chat template (its tokenizer_config.json has no chat_template); pass "
                         "one (chat_template=..., or --chat-template FILE) or use plain generation")
    return template


def prompt_ids(tokenizer, messages, chat_template: str | None = None, add_generation_prompt: bool = True,
               **template_kwargs) -> list[int]:
    """Token ids of the conversation, rendered by the chat template, ready for the model's reply."""
    checks.messages(messages)
    checks.flag("add_generation_prompt", add_generation_prompt)
    text = render_chat(template_of(tokenizer, chat_template), messages, tokenizer.special_tokens_map,
                       add_generation_prompt=add_generation_prompt, **template_kwargs)
    ids = tokenizer.encode_special(text)
    if not ids:
        raise JaxlmError("the chat template rendered an empty prompt for these messages")
    return ids


def stop_ids(tokenizer, generation_config: Mapping, chat_template: str | None = None) -> list[int]:
    """End-of-turn ids: the template's markers, generation_config.json's eos ids, the tokenizer's eos."""
    ids = set(end_of_turn_ids(template_of(tokenizer, chat_template), tokenizer.special_tokens))
    eos = generation_config.get("eos_token_id")
    ids.update(e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int))
    if tokenizer.eos_id >= 0:
        ids.add(tokenizer.eos_id)
    return sorted(ids)


def is_batch(messages) -> bool:
    """A list of conversations (each a list of messages) rather than one conversation."""
    return isinstance(messages, Sequence) and bool(messages) and not isinstance(messages[0], Mapping) \
        and isinstance(messages[0], Sequence) and not isinstance(messages[0], str)
