"""Chat: the model's template applied exactly as transformers' apply_chat_template applies it
(Llama-3-Instruct and Phi-3-instruct templates, multi-turn with a system message), carried through
from-hf with the stop tokens, and generation ending at the end-of-turn token."""

from __future__ import annotations

import pytest

from hf_tokenizer_helpers import LLAMA3_SPECIALS, PHI3_SPECIALS, save_fast_tokenizer, tiny_llama, train_bpe

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from jaxlm.cli.main import main  # noqa: E402
from jaxlm.convert import from_hf  # noqa: E402
from jaxlm.errors import JaxlmError  # noqa: E402

# Meta-Llama-3-8B-Instruct's template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Phi-3-mini-4k-instruct's template.
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'system') %}"
    "{{'<|system|>' + '\n' + message['content'] + '<|end|>' + '\n'}}{% elif (message['role'] == 'user') %}"
    "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
    "{% elif message['role'] == 'assistant' %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}")
# transformers' globals and filters: raise_exception, strftime_now, tojson, loop controls, trim/lstrip blocks.
EXTRAS_TEMPLATE = """{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message must come first') }}\
{% endif %}
{% for m in messages %}
  {% if m['role'] == 'tool' %}{% continue %}{% endif %}
  [{{ strftime_now('%Y') }}] {{ m | tojson }}
{% endfor %}
{% if add_generation_prompt %}<|eot_id|>{% endif %}"""
CONVERSATION = [
    {"role": "system", "content": "You are a player in a comedy."},
    {"role": "user", "content": "Who goes there?"},
    {"role": "assistant", "content": "  A friend, sir: ROSALIND, in a doublet & hose.  "},
    {"role": "user", "content": "Then speak, \"friend\", and enter."},
]


def chat_model(root, specials, template, bos, eos, end_of_turn, rigged: bool = False):
    """A tiny transformers Llama + tokenizer.json with a chat template and generation_config eos ids,
    converted with from-hf. rigged: the model answers any token with "A" and "A" with end_of_turn."""
    backend = train_bpe(specials, vocab_size=600, files=1)
    ids = {t: backend.token_to_id(t) for t in specials}
    hf = root / "hf"
    model = tiny_llama(hf, backend.get_vocab_size(), ids[bos], ids[eos])
    if rigged:
        a = backend.token_to_id("A")
        with torch.no_grad():  # layers add nothing: the next token depends on the current token alone
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.model.embed_tokens.weight[:, :2] = torch.tensor([10.0, 0.0])
            model.model.embed_tokens.weight[a, :2] = torch.tensor([0.0, 10.0])
            model.lm_head.weight.zero_()
            model.lm_head.weight[a, 0] = model.lm_head.weight[ids[end_of_turn], 1] = 10.0
        model.save_pretrained(hf)
    save_fast_tokenizer(backend, hf, bos=bos, eos=eos, chat_template=template,
                        generation_eos=[ids[eos], ids[end_of_turn]])  # after the model's own generation_config
    from_hf(hf, root / "jx")
    return hf, root / "jx", ids


@pytest.fixture(scope="module", params=["llama3", "phi3"])
def chat_dirs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"chat_{request.param}")
    if request.param == "llama3":
        return chat_model(root, LLAMA3_SPECIALS, LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>",
                          "<|eot_id|>")
    return chat_model(root, PHI3_SPECIALS, PHI3_TEMPLATE, "<s>", "<|endoftext|>", "<|end|>")


def test_chat_prompt_ids_equal_apply_chat_template(chat_dirs):
    import jaxlm

    hf, jx, ids = chat_dirs
    auto = transformers.AutoTokenizer.from_pretrained(hf)
    lm = jaxlm.load(jx)
    assert lm.tokenizer.chat_template == auto.chat_template  # from-hf carried the template
    for turns in (CONVERSATION[:2], CONVERSATION, CONVERSATION[1:]):
        want = auto.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert lm.chat_prompt(turns) == list(want)
        text = auto.apply_chat_template(turns, add_generation_prompt=False, tokenize=False)
        assert lm.tokenizer.decode(lm.chat_prompt(turns, add_generation_prompt=False)) == text
    # Stop ids: the template's end-of-turn marker and generation_config.json's eos ids.
    from jaxlm.inference.chat import stop_ids

    eot = ids["<|eot_id|>"] if "<|eot_id|>" in ids else ids["<|end|>"]
    assert {eot, lm.tokenizer.eos_id} <= set(stop_ids(lm.tokenizer, lm.generation_config))


def test_template_globals_and_errors_match_transformers(chat_dirs):
    import jaxlm

    hf, jx, _ = chat_dirs
    auto = transformers.AutoTokenizer.from_pretrained(hf)
    lm = jaxlm.load(jx)
    turns = CONVERSATION + [{"role": "tool", "content": "skipped"}]
    want = auto.apply_chat_template(turns, chat_template=EXTRAS_TEMPLATE, add_generation_prompt=True, tokenize=False)
    assert lm.tokenizer.decode(lm.chat_prompt(turns, chat_template=EXTRAS_TEMPLATE)) == want
    with pytest.raises(JaxlmError, match="a system message must come first"):
        lm.chat_prompt(CONVERSATION[1:], chat_template=EXTRAS_TEMPLATE)
    with pytest.raises(JaxlmError, match="does not parse"):
        lm.chat_prompt(CONVERSATION, chat_template="{% for m in messages %}")
    with pytest.raises(JaxlmError, match="message 0 must be a dict"):
        lm.chat_prompt(["hello"])


@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    return chat_model(tmp_path_factory.mktemp("rigged"), LLAMA3_SPECIALS, LLAMA3_TEMPLATE, "<|begin_of_text|>",
                      "<|end_of_text|>", "<|eot_id|>", rigged=True)


def test_generation_stops_at_the_end_of_turn(rigged):
    import jaxlm

    hf, jx, ids = rigged
    lm = jaxlm.load(jx)
    prompt = lm.chat_prompt(CONVERSATION)
    free = lm.generate_ids([prompt], 6, stop_tokens=[], temperature=0.0).tokens[0]
    a = lm.tokenizer.encode("A")[0]
    assert free[:2] == [a, ids["<|eot_id|>"]]  # the rigged model writes "A", then ends its turn
    assert lm.chat(CONVERSATION, 6) == "A"
    assert lm.chat([CONVERSATION, CONVERSATION[:2]], 6) == ["A", "A"]  # a batch of conversations
    assert "".join(lm.stream_chat(CONVERSATION, 6)) == "A"
    # transformers' generate on the same folder stops at the same place.
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt):].tolist()
    assert out == [a, ids["<|eot_id|>"]]


def test_generate_chat_cli_keeps_the_history(rigged, capsys, monkeypatch):
    import io

    _, jx, _ = rigged
    assert main(["generate", "--ckpt", str(jx), "--chat", "--system", "Be brief.", "--prompt", "Hi",
                 "--prompt", "Again", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == ["A", "A"]
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n\nAgain\n"))
    assert main(["generate", "--ckpt", str(jx), "--chat", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == ["A", "A"]
    # Another template (the bundled play-script one) instead of the model's.
    assert main(["generate", "--ckpt", str(jx), "--chat", "--chat-template", "bundled:chat/script.jinja",
                 "--prompt", "Good morrow.", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("A")


def test_model_without_a_template_is_a_clear_error(tmp_path, capsys):
    from convert_helpers import save_jaxlm_model

    save_jaxlm_model(tmp_path / "jx", "tiny_uniform", ["model.num_layers=1", "model.model_dim=32",
                                                       "model.num_query_heads=2", "model.num_kv_heads=1",
                                                       "model.head_dim=16", "model.ffn_dim=32"])
    assert main(["generate", "--ckpt", str(tmp_path / "jx"), "--chat", "--prompt", "Hi"]) == 2
    assert "has no chat template" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(tmp_path / "jx"), "--chat-template", "x.jinja", "--prompt", "Hi"]) == 2
    assert "need --chat" in capsys.readouterr().err
