"""Tokenizers in GGUF metadata (`tokenizer.ggml.*`), both ways, as llama.cpp's converter writes them.

- sentencepiece -> `llama`: the pieces, their scores and types (sentencepiece's type numbers are
  GGUF's), the "default" pre-tokenizer; ids past the tokenizer up to the model's vocab_size are
  `[PAD{i}]` pieces of type UNUSED (the converter's padding).
- tiktoken and byte-level BPE `tokenizer.json` -> `gpt2`: tokens in GPT-2's byte alphabet, the
  merges, special tokens as CONTROL, and the pre-tokenizer by name: `llama-bpe` (Llama 3's split
  regex) or `gpt-2` (ByteLevel's own regex); llama.cpp knows no other regex by content.
- a sentencepiece-style BPE `tokenizer.json` (byte fallback, spaces as "▁") -> `llama`, each piece
  scored by the rank of the first merge that makes it.
- bos / eos / unk / pad ids, add_bos_token / add_eos_token and the chat template, always.

Back: `llama` becomes a sentencepiece BPE model (identity normaliser, llama.cpp's SPM rules: merge
the adjacent pair whose union scores best, byte fallback); `gpt2` a `tokenizer.json` built with the
`tokenizers` library.
"""

from __future__ import annotations

import dataclasses
import json
import re

import gguf

from jaxlm.errors import JaxlmError
from jaxlm.tokenizer import LLAMA3_PATTERN, HFTokenizer, SentencePieceTokenizer, Tokenizer
from jaxlm.tokenizer.hf_export import to_tokenizers

T = gguf.TokenType
K = gguf.Keys.Tokenizer
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_PATTERNS = {"llama-bpe": LLAMA3_PATTERN, "llama3": LLAMA3_PATTERN, "gpt-2": GPT2_PATTERN, "default": GPT2_PATTERN,
                "smollm": GPT2_PATTERN}
# llama.cpp splits every digit off first for these (SmolLM's tokenizer.json: Digits(individual_digits) + ByteLevel)
PRE_DIGITS = {"smollm"}
PAD_PIECE = re.compile(r"\[PAD\d+\]")
ROLES = ("bos", "eos", "unk", "pad")


@dataclasses.dataclass
class GGUFVocab:
    model: str  # "llama" (sentencepiece) | "gpt2" (byte-level BPE) | "none"
    pre: str = "default"
    tokens: list[str] = dataclasses.field(default_factory=list)
    types: list[int] = dataclasses.field(default_factory=list)
    scores: list[float] | None = None
    merges: list[str] | None = None
    ids: dict[str, int] = dataclasses.field(default_factory=dict)  # bos / eos / unk / pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None  # llama.cpp's default for `llama` is true
    chat_template: str | None = None

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.model == "none":
            return
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.merges:
            w.add_token_merges(self.merges)
        for role in ROLES:
            if self.ids.get(role, -1) >= 0:
                getattr(w, f"add_{role}_token_id")(self.ids[role])
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            w.add_chat_template(self.chat_template)

    @classmethod
    def read(cls, fields: dict) -> "GGUFVocab | None":
        """From GGUF fields (jaxlm.convert.gguf_meta.read_fields); None when the file has no tokenizer."""
        model = fields.get(K.MODEL)
        if model in (None, "none") or K.LIST not in fields:
            return None
        ids = {r: int(fields[k]) for r, k in (("bos", K.BOS_ID), ("eos", K.EOS_ID), ("unk", K.UNK_ID),
                                              ("pad", K.PAD_ID)) if k in fields}
        n = len(fields[K.LIST])
        return cls(model, fields.get(K.PRE, "default"), list(fields[K.LIST]),
                   [int(t) for t in fields.get(K.TOKEN_TYPE, [T.NORMAL] * n)],
                   [float(s) for s in fields[K.SCORES]] if K.SCORES in fields else None,
                   list(fields.get(K.MERGES, [])) or None, ids, bool(fields.get(K.ADD_BOS, model == "llama")),
                   bool(fields.get(K.ADD_EOS, False)), fields.get(K.ADD_PREFIX), fields.get(K.CHAT_TEMPLATE))


def vocab_from_tokenizer(tok: Tokenizer, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of a jaxlm tokenizer, padded to the model's `vocab_size` rows."""
    if tok.kind == "sentencepiece":
        vocab = _from_sentencepiece(tok)
    else:
        vocab = _from_tokenizer_json(tok)
    pad = range(len(vocab.tokens), vocab_size)
    vocab.tokens += [f"[PAD{i}]" for i in pad]
    vocab.types += [int(T.UNUSED)] * len(pad)
    if vocab.scores is not None:
        vocab.scores += [-1000.0] * len(pad)
    vocab.ids = {"bos": tok.bos_id, "eos": tok.eos_id, **vocab.ids}
    if tok.pad_id not in (tok.eos_id, tok.bos_id, vocab.ids.get("unk")):
        vocab.ids["pad"] = tok.pad_id
    vocab.add_bos = tok.adds_bos
    vocab.chat_template = tok.chat_template
    return vocab


def _from_sentencepiece(tok) -> GGUFVocab:
    # lazy: the protobuf schema loads only for export
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto)
    norm = proto.normalizer_spec
    if proto.trainer_spec.model_type != 2 or norm.precompiled_charsmap or norm.remove_extra_whitespaces:
        raise JaxlmError("llama.cpp's sentencepiece tokenizer is BPE with no normalisation; this tokenizer.model is "
                         "a unigram model or normalises text, so llama.cpp would split text differently; retrain it "
                         "with `jaxlm tokenizer train` or export with --no-tokenizer")
    ids = {"unk": tok.processor.unk_id()}
    return GGUFVocab("llama", "default", [p.piece for p in proto.pieces], [int(p.type) for p in proto.pieces],
                     [float(p.score) for p in proto.pieces], None, ids,
                     add_space_prefix=None if norm.add_dummy_prefix else False)


def _from_tokenizer_json(tok) -> GGUFVocab:
    """tiktoken or a tokenizer.json: byte-level BPE -> `gpt2`; sentencepiece-style BPE -> `llama`."""
    spec = json.loads(to_tokenizers(tok).to_str() if tok.kind != "hf" else tok.tokenizer_json)
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise JaxlmError(f"this tokenizer.json is a {model.get('type')} model; jaxlm exports BPE tokenizers to GGUF "
                         f"(sentencepiece, tiktoken, tokenizer.json BPE), or use --no-tokenizer")
    tokens, types = _token_table(spec)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if model.get("byte_fallback"):
        return _from_spm_json(spec, tokens, types, merges)
    if spec.get("normalizer"):
        raise JaxlmError("this tokenizer.json normalises text before its byte-level BPE, which llama.cpp does not; "
                         "export with --no-tokenizer")
    return GGUFVocab("gpt2", _pre_name(spec.get("pre_tokenizer")), tokens, types, None, merges)


def _token_table(spec: dict) -> tuple[list[str], list[int]]:
    """Tokens by id (gaps as converter padding) and their types: added tokens CONTROL (special) or
    USER_DEFINED; sentencepiece-style byte pieces <0xNN> BYTE; the unk token UNKNOWN."""
    model = spec["model"]
    vocab = dict(model["vocab"])
    kinds = {}
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        kinds[added["id"]] = T.CONTROL if added.get("special") else T.USER_DEFINED
    size = max(vocab.values()) + 1
    tokens, types = [f"[PAD{i}]" for i in range(size)], [int(T.UNUSED)] * size
    for text, i in vocab.items():
        byte = model.get("byte_fallback") and re.fullmatch(r"<0x[0-9A-F]{2}>", text)
        kind = T.UNKNOWN if text == model.get("unk_token") else T.BYTE if byte else T.NORMAL
        tokens[i], types[i] = text, int(kinds.get(i, kind))
    return tokens, types


def _from_spm_json(spec: dict, tokens: list[str], types: list[int], merges: list[str]) -> GGUFVocab:
    """A sentencepiece-style tokenizer.json (byte fallback, spaces as "▁": what transformers saves for
    Llama 2, Phi-3, OpenELM) -> `llama`. llama.cpp merges the adjacent pair whose union scores best, and
    a BPE merges the pair of lowest rank, so a piece's score is minus the rank of the first merge making it."""
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] if norm else []
    space = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    if pre.get("type") == "Metaspace" and not steps and not pre.get("split", True):
        prefix = pre.get("prepend_scheme", "always") != "never"
    elif not pre and space in steps and all(s in (space, {"type": "Prepend", "prepend": "\u2581"}) for s in steps):
        prefix = len(steps) == 2
    else:
        raise JaxlmError("this sentencepiece-style tokenizer.json splits or normalises text in a way llama.cpp's "
                         "sentencepiece tokenizer does not; export with --no-tokenizer")
    scores = {}
    for rank, merge in enumerate(merges):
        scores.setdefault(merge.replace(" ", ""), -float(rank))
    unk = next((i for i, t in enumerate(types) if t == T.UNKNOWN), -1)
    return GGUFVocab("llama", "default", tokens, types, [scores.get(t, 0.0) for t in tokens], None, {"unk": unk},
                     add_space_prefix=None if prefix else False)


def _pre_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer it implements (matched by content)."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True) and steps[0].get("pattern", {}).get("Regex") == LLAMA3_PATTERN):
        return "llama-bpe"
    if (len(steps) == 2 and steps[0] == {"type": "Digits", "individual_digits": True}
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space")):
        return "smollm"  # SmolLM's own tokenizer.json
    splits = [s.get("pattern", {}).get("Regex") for s in steps[:-1] if s.get("type") == "Split"]
    if (len(splits) == len(steps) - 1 and steps and steps[-1].get("type") == "ByteLevel"
            and not steps[-1].get("use_regex", True)):  # the form _to_tokenizer_json writes on import
        for name in ("gpt-2", "smollm"):
            if splits == [r"\p{N}"] * (name in PRE_DIGITS) + [PRE_PATTERNS[name]]:
                return name
    raise JaxlmError("the tokenizer's pre-tokenizer split is none of Llama 3's, GPT-2's or SmolLM's, the byte-level "
                     "splits llama.cpp implements by name, so llama.cpp would tokenize differently; export with "
                     "--no-tokenizer")


def tokenizer_from_vocab(v: GGUFVocab) -> Tokenizer:
    """A jaxlm tokenizer that encodes as llama.cpp does with this vocabulary."""
    if v.model == "llama":
        tok = _to_sentencepiece(v)
    elif v.model == "gpt2":
        tok = _to_tokenizer_json(v)
    else:
        raise JaxlmError(f"GGUF tokenizer model {v.model!r} is not supported; jaxlm reads llama (sentencepiece) "
                         f"and gpt2 (byte-level BPE) vocabularies, or convert with --no-tokenizer")
    names = {role: v.tokens[i] for role, i in v.ids.items() if 0 <= i < len(v.tokens)}
    config = {f"{role}_token": names[role] for role in ROLES if role in names}
    config.update(add_bos_token=v.add_bos, add_eos_token=v.add_eos)
    if v.chat_template:
        config["chat_template"] = v.chat_template
    tok.hf_config = {**tok.hf_config, **config}
    return tok


def _real_size(v: GGUFVocab) -> int:
    """Ids up to the last one that is not converter padding ([PAD{i}], UNUSED)."""
    n = len(v.tokens)
    while n and v.types[n - 1] == T.UNUSED and PAD_PIECE.fullmatch(v.tokens[n - 1]):
        n -= 1
    return n


def _to_sentencepiece(v: GGUFVocab) -> SentencePieceTokenizer:
    # lazy: the protobuf schema loads only for import
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    n = _real_size(v)
    scores = v.scores or [0.0] * n
    for text, score, kind in zip(v.tokens[:n], scores, v.types):
        proto.pieces.add(piece=text, score=score, type=kind)
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size = 2, n  # BPE
    spec.byte_fallback = T.BYTE in v.types[:n]
    for role in ROLES:  # -1: absent; sentencepiece reads the pieces by these ids
        setattr(spec, f"{role}_id", v.ids.get(role, -1) if v.ids.get(role, -1) < n else -1)
    if spec.unk_id < 0:
        spec.unk_id = next((i for i, t in enumerate(v.types[:n]) if t == T.UNKNOWN), 0)
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix = "identity", v.add_space_prefix is not False
    norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
    return SentencePieceTokenizer(proto.SerializeToString(), source="the GGUF vocabulary")


def _to_tokenizer_json(v: GGUFVocab) -> HFTokenizer:
    # lazy: the tokenizers library loads only for import
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if v.pre not in PRE_PATTERNS:
        raise JaxlmError(f"GGUF pre-tokenizer {v.pre!r} is not supported; jaxlm reads {', '.join(PRE_PATTERNS)}")
    keep = [i for i in range(len(v.tokens)) if not (v.types[i] == T.UNUSED and PAD_PIECE.fullmatch(v.tokens[i]))]
    vocab = {v.tokens[i]: i for i in keep}
    merges = [tuple(m.split(" ", 1)) for m in v.merges or []]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=v.pre in ("llama-bpe", "llama3")))
    digits = [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated", invert=False)] if v.pre in PRE_DIGITS else []
    backend.pre_tokenizer = pre_tokenizers.Sequence(digits + [
        pre_tokenizers.Split(Regex(PRE_PATTERNS[v.pre]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(v.tokens[i], special=True, normalized=False)
                                for i in keep if v.types[i] == T.CONTROL])
    backend.add_tokens([AddedToken(v.tokens[i], normalized=False) for i in keep if v.types[i] == T.USER_DEFINED])
    bos = v.ids.get("bos", -1)
    if v.add_bos and 0 <= bos < len(v.tokens):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{v.tokens[bos]} $A", pair=f"{v.tokens[bos]} $A {v.tokens[bos]} $B",
            special_tokens=[(v.tokens[bos], bos)])
    names = {role: v.tokens[i] for role, i in v.ids.items() if 0 <= i < len(v.tokens)}
    config = {f"{role}_token": names[role] for role in ROLES if role in names}
    return HFTokenizer(backend.to_str(), config, source="the GGUF vocabulary")
