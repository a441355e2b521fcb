"""Chat rendering for post-training: the assistant-token mask equals transformers'
`apply_chat_template(..., return_assistant_tokens_mask=True)` token for token (Llama-3-style and ChatML
templates with `{% generation %}` blocks, multi-turn with a system message), and a template without
those blocks gets the same mask from rendered prefixes, end-of-turn token included."""

from __future__ import annotations

import numpy as np
import pytest

from hf_tokenizer_helpers import LLAMA3_SPECIALS, save_fast_tokenizer, train_bpe

transformers = pytest.importorskip("transformers")

from jaxlm.errors import JaxlmError  # noqa: E402
from jaxlm.posttrain.render import ChatRenderer  # noqa: E402
from jaxlm.tokenizer import load_tokenizer  # noqa: E402

LLAMA3_GENERATION = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML_GENERATION = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_PLAIN = LLAMA3_GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}", "")
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CONVERSATIONS = [
    [{"role": "system", "content": "You are a player in a comedy."},
     {"role": "user", "content": "Who goes there?"},
     {"role": "assistant", "content": "A friend, sir: ROSALIND, in a doublet & hose."},
     {"role": "user", "content": "Then speak, \"friend\", and enter."},
     {"role": "assistant", "content": "I come, I come. Is this the forest of Arden?"}],
    [{"role": "user", "content": "Speak the speech, I pray you."},
     {"role": "assistant", "content": "Trippingly on the tongue."}],
]


@pytest.fixture(scope="module", params=["llama3", "chatml"])
def tokenizers(request, tmp_path_factory):
    specials, template = {"llama3": (LLAMA3_SPECIALS, LLAMA3_GENERATION),
                          "chatml": (CHATML_SPECIALS, CHATML_GENERATION)}[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    save_fast_tokenizer(train_bpe(specials, vocab_size=500, files=1), folder, specials[0], specials[1], template)
    return transformers.AutoTokenizer.from_pretrained(folder), load_tokenizer(folder), template


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_mask_equals_transformers(tokenizers, conversation):
    hf, tok, template = tokenizers
    messages = CONVERSATIONS[conversation]
    out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = ChatRenderer(tok, template).encode(messages)
    assert ids.tolist() == list(out["input_ids"])
    assert mask.astype(int).tolist() == list(out["assistant_masks"])
    assert 0 < mask.sum() < len(mask)


def test_mask_from_prefixes_equals_generation_blocks(tmp_path):
    """Without {% generation %}: the same tokens, end-of-turn included, found from rendered prefixes."""
    save_fast_tokenizer(train_bpe(LLAMA3_SPECIALS, vocab_size=500, files=1), tmp_path, "<|begin_of_text|>",
                        "<|end_of_text|>", LLAMA3_GENERATION)
    tok = load_tokenizer(tmp_path)
    eot = tok.special_tokens["<|eot_id|>"]
    for messages in CONVERSATIONS:
        ids, marked = ChatRenderer(tok, LLAMA3_GENERATION).encode(messages)
        ids_plain, derived = ChatRenderer(tok, LLAMA3_PLAIN).encode(messages)
        assert ids.tolist() == ids_plain.tolist() and derived.tolist() == marked.tolist()
        assert ids[derived].tolist().count(eot) == sum(m["role"] == "assistant" for m in messages)
        everything = ChatRenderer(tok, LLAMA3_PLAIN, train_on="all").encode(messages)[1]
        assert everything.all()


def test_template_that_is_not_prefix_stable_is_refused(tok):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ messages | length }}"
    with pytest.raises(JaxlmError, match="generation"):
        ChatRenderer(tok, template).encode(CONVERSATIONS[1])
    ids, mask = ChatRenderer(tok, template.replace("{{ messages | length }}", "")).encode(CONVERSATIONS[1])
    assert np.any(mask) and not mask[0]
