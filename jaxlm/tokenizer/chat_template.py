"""Chat templates (Jinja, from tokenizer_config.json) rendered as transformers' `apply_chat_template`
renders them, so a chat prompt is the same text, and then the same ids.

The environment is transformers' (5.24, `utils/chat_template_utils.py`): a sandboxed, immutable
Jinja environment with trim_blocks and lstrip_blocks, the loop-controls extension, a `tojson`
filter that does not escape HTML, the globals `raise_exception` and `strftime_now`, and a
`{% generation %}` tag (rendered as its body). The template sees `messages`, `tools`, `documents`,
`add_generation_prompt`, the tokenizer's named special tokens (`bos_token`, `eos_token`, ...) and
any extra keyword arguments. Messages are dicts; keys whose value is None are dropped, as
transformers does.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime

from jaxlm.errors import JaxlmError

# End-of-turn markers of the common chat formats (Llama 3, Phi-3, ChatML, Gemma): a chat stops at
# whichever of them the template writes and the tokenizer has as a special token.
END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|end|>", "<|im_end|>", "<end_of_turn>", "<|endoftext|>")
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")
# While set (render_with_generation_spans), `{% generation %}` bodies render between these two private-use
# characters, so the caller can find the assistant text that transformers' assistant mask covers.
_SPAN_MARKS = ("\ue000", "\ue001")
_MARK_GENERATION: contextvars.ContextVar[bool] = contextvars.ContextVar("mark_generation", default=False)


@functools.lru_cache(maxsize=16)
def compile_template(source: str, origin: str = "the chat template (chat_template in tokenizer_config.json)"):
    """The Jinja template of `source`; a JaxlmError naming `origin` (where the text came from) if it does not parse."""
    # lazy: jinja2 takes ~0.2 s to import; only chat prompts need it
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; it renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            body = caller()
            return f"{_SPAN_MARKS[0]}{body}{_SPAN_MARKS[1]}" if _MARK_GENERATION.get() else body

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise JaxlmError(f"{origin} does not parse (line {e.lineno}: {e.message}); fix it") from None


def check_messages(messages) -> list[dict]:
    """A list of {"role": ..., "content": ...} dicts (None values dropped), or a JaxlmError naming the bad one."""
    if isinstance(messages, Mapping) or not isinstance(messages, Sequence) or isinstance(messages, str):
        raise JaxlmError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise JaxlmError("messages is empty; give at least one {'role': 'user', 'content': ...} message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise JaxlmError(f"message {i} must be a dict with a 'role' string and a 'content', got {m!r:.80}")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def render_chat(template: str, messages, special_tokens: Mapping[str, str], add_generation_prompt: bool = True,
                tools=None, documents=None, **kwargs) -> str:
    """The prompt text `apply_chat_template(messages, tokenize=False, ...)` gives."""
    # lazy: jinja2 takes ~0.2 s to import; only chat prompts need it
    import jinja2

    context = {**special_tokens, **kwargs}
    try:
        return compile_template(template).render(messages=check_messages(messages), tools=tools, documents=documents,
                                                 add_generation_prompt=add_generation_prompt, **context)
    except jinja2.exceptions.TemplateError as e:  # raise_exception(...) in the template, or a bad construct
        raise JaxlmError(f"the chat template refused the conversation: {e}") from None
    except (ArithmeticError, LookupError, TypeError, ValueError) as e:
        # the template's own code failed, e.g. a range over the sandbox's limit (OverflowError), 1/0, "a" + 1
        if not any(f.filename == "<template>" for f in traceback.extract_tb(e.__traceback__)):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise JaxlmError(f"the chat template failed on this conversation ({type(e).__name__}: {first}); fix the "
                         f"template") from None


def end_of_turn_ids(template: str, special_tokens: Mapping[str, int]) -> list[int]:
    """Ids of the end-of-turn markers that the template writes."""
    return [special_tokens[t] for t in END_OF_TURN if t in template and t in special_tokens]


def render_with_generation_spans(template: str, messages, special_tokens: Mapping[str, str],
                                 **kwargs) -> tuple[str, list[tuple[int, int]]]:
    """`render_chat`'s text and the (start, end) character spans of its `{% generation %}` blocks."""
    if any(m in str(messages) for m in _SPAN_MARKS):
        raise JaxlmError("a message holds the private-use characters U+E000 / U+E001; remove them")
    token = _MARK_GENERATION.set(True)
    try:
        marked = render_chat(template, messages, special_tokens, **kwargs)
    finally:
        _MARK_GENERATION.reset(token)
    text, spans, start = [], [], None
    for piece in re.split(f"([{''.join(_SPAN_MARKS)}])", marked):
        if piece == _SPAN_MARKS[0]:
            start = sum(map(len, text))
        elif piece == _SPAN_MARKS[1]:
            spans.append((start, sum(map(len, text))))
        else:
            text.append(piece)
    return "".join(text), spans
