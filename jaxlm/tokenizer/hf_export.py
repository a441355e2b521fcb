"""Hugging Face tokenizer files for any jaxlm tokenizer: tokenizer.json, tokenizer_config.json and
special_tokens_map.json, so `AutoTokenizer.from_pretrained(folder)` encodes exactly as jaxlm does.

The tokenizer.json is built with the `tokenizers` library itself (no transformers):
- tiktoken BPE -> byte-level BPE: vocabulary = the ranks (bytes in GPT-2's byte-to-unicode
  alphabet), merges = every split of a token into two lower-ranked tokens, ordered by the merged
  rank (as transformers' TikTokenConverter does), `ignore_merges` (tiktoken takes a pre-split word
  that is itself a token whole), the split regex, the special tokens at their ids.
- sentencepiece BPE -> BPE over the same pieces: sentencepiece merges the adjacent pair whose
  union has the best score, so the merges are every split of a piece into two pieces, ordered by the
  piece's score; its normaliser (spaces -> "▁", the dummy-prefix "▁") and byte fallback. Only
  what this reproduces exactly: BPE models with the identity normaliser, no whitespace collapsing,
  no user-defined pieces (LLaMA-2's, OpenELM's, Phi-3's and `jaxlm tokenizer train`'s qualify);
  for others there is no tokenizer.json and transformers converts the tokenizer.model itself.
A tokenizer.json tokenizer (`hf`) is written back as it came.
The post-processor adds BOS, as Llama's tokenizers do, so `AutoTokenizer(text).input_ids` ==
`encode(text, add_bos=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxlm.outputs import write_file
from jaxlm.tokenizer.base import HF_CONFIG_FILE, Tokenizer
from jaxlm.tokenizer.hf_json import FILE_NAME, SPECIAL_MAP_FILE, token_text

SPACE = "\u2581"  # sentencepiece's visible space "▁"


def write_hf_tokenizer(tok: Tokenizer, directory: str | Path, model_max_length: int) -> list[Path]:
    """Write the three HF files for `tok` into `directory` (tokenizer_config.json without a
    tokenizer.json when `tok` cannot be converted exactly); returns their paths."""

    directory = Path(directory)
    if tok.kind == "hf":
        backend_json = tok.tokenizer_json  # as it came
    else:
        backend = to_tokenizers(tok)
        backend_json = None if backend is None else backend.to_str(pretty=True)
    files = [] if backend_json is None else [write_file(directory / FILE_NAME, backend_json)]
    config, special_map = hf_tokenizer_config(tok, model_max_length, has_json=backend_json is not None)
    files.append(write_file(directory / HF_CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False)))
    files.append(write_file(directory / SPECIAL_MAP_FILE, json.dumps(special_map, indent=2, ensure_ascii=False)))
    return files


def hf_tokenizer_config(tok: Tokenizer, model_max_length: int, has_json: bool) -> tuple[dict, dict]:
    """(tokenizer_config.json, special_tokens_map.json) contents: the tokenizer's own settings
    (chat template included) with the roles jaxlm uses."""
    names = {i: t for t, i in tok.special_tokens.items()}
    roles = {"bos_token": names.get(tok.bos_id), "eos_token": names.get(tok.eos_id)}
    if tok.pad_id not in (tok.eos_id, tok.bos_id) and tok.pad_id in names:
        roles["pad_token"] = names[tok.pad_id]
    if tok.kind == "sentencepiece":
        unk = tok.processor.unk_id()
        roles["unk_token"] = tok.processor.id_to_piece(unk) if unk >= 0 else None
    config = dict(tok.hf_config)
    for role, text in roles.items():
        if text is not None and token_text(config.get(role)) is None:
            config[role] = text
    if tok.kind != "hf":
        # With a tokenizer.json, the generic fast class reads it as written; transformers' Llama
        # classes would rebuild parts of the pipeline.
        config["tokenizer_class"] = "PreTrainedTokenizerFast" if has_json else "LlamaTokenizer"
        config.setdefault("clean_up_tokenization_spaces", False)
        config["model_max_length"] = model_max_length
        if not has_json:  # transformers builds the tokenizer from tokenizer.model
            config.update(add_bos_token=True, add_eos_token=False, legacy=False)
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    special_map = {role: token_text(config.get(role)) for role in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return config, {k: v for k, v in special_map.items() if v is not None}


def to_tokenizers(tok: Tokenizer):
    """A `tokenizers.Tokenizer` that encodes and decodes as `tok`, or None where that cannot be
    made exactly (see the module docstring)."""
    if tok.kind == "hf":
        return tok.backend
    if tok.kind == "tiktoken":
        return _from_tiktoken(tok)
    if tok.kind == "sentencepiece":
        return _from_sentencepiece(tok)
    return None


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies are written in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _post_processor(bos: str | None, bos_id: int):
    # lazy: the tokenizers library loads only to export, not with `import jaxlm.tokenizer`
    from tokenizers import processors

    if bos is None or bos_id < 0:
        return None
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])


def _from_tiktoken(tok):
    # lazy: as above
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()
    ranks = tok.ranks

    def text(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if ranks.get(left, rank) < rank and ranks.get(right, rank) < rank:
                merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
    merges.sort()
    vocab = {text(t): r for t, r in ranks.items()}
    vocab.update(tok.special_tokens)  # at their own ids, so the added tokens below keep them
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
    backend.post_processor = _post_processor(tok.bos_token, tok.bos_id)
    return backend


def _from_sentencepiece(tok):
    # lazy: the protobuf schema and the tokenizers library load only to export
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto)
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    # sentencepiece piece types; byte pieces (<0x41>, type 6) stay in the vocabulary for the byte
    # fallback, outside the merges.
    normal, unknown, control, user = 1, 2, 3, 4
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    exact = (trainer.model_type == 2 and norm.name == "identity" and not norm.precompiled_charsmap
             and not norm.remove_extra_whitespaces and not trainer.treat_whitespace_as_suffix
             and not any(t == user for _, _, t in pieces))
    if not exact:
        return None
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    merges = []
    for piece, score, kind in pieces:
        if kind != normal:
            continue
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab and pieces[vocab[left]][2] == pieces[vocab[right]][2] == normal:
                merges.append((-score, vocab[piece], i, left, right))
    merges.sort()  # best score first; ties by id, then split point
    unk = next((p for p, _, t in pieces if t == unknown), None)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk,
                                   byte_fallback=trainer.byte_fallback, fuse_unk=True))
    prefix = [normalizers.Prepend(SPACE)] if norm.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", SPACE)])
    strip = [decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(),
                                         decoders.Fuse()] + strip)
    backend.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _, t in pieces if t == control])
    names = {i: p for p, i in tok.special_tokens.items()}
    backend.post_processor = _post_processor(names.get(tok.bos_id), tok.bos_id)
    return backend
