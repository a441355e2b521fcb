"""`JaxlmLM`: a jaxlm model as an lm-evaluation-harness model, registered as `jaxlm`.

    lm_eval.simple_evaluate(model="jaxlm", model_args="path=runs/default,batch_size=8", tasks=[...])

(after `import jaxlm.eval`, or through `python -m jaxlm.eval`, which is the `lm_eval` command with
`jaxlm` registered; lm-eval 0.4 has no plugin discovery), or `jaxlm eval --ckpt DIR --tasks ...`.

It follows lm-eval's Hugging Face model (`--model hf`) request by request, so a jaxlm model and its
`jaxlm convert to-hf` export get the same scores:
- tokens: `tok_encode` adds BOS when the tokenizer's own rule does (`Tokenizer.adds_bos`: a
  tokenizer.json's post-processor, else tokenizer_config.json's add_bos_token), unless the text starts
  with it; `add_bos_token` overrides. Context / continuation splitting and the empty-context prefix are lm-eval's own
  (`TemplateLM._encode_pair`, `prefix_token_id` = BOS, else EOS).
- loglikelihood: the last max_length tokens of context + continuation, the continuation's summed
  log-probabilities and whether every continuation token is the argmax.
- loglikelihood_rolling: lm-eval's disjoint rolling windows of max_length tokens.
- generate_until: greedy (or sampled, from the request's temperature / top_p / top_k) up to
  max_gen_toks tokens, stopping at EOS or once every row holds a stop string, the text cut at the
  first stop string; contexts left-truncated to max_length - max_gen_toks.
Batched: requests are sorted by length and scored `batch_size` rows at a time in padded, bucketed
shapes (one compiled forward per shape, `Scorer.continuation_scores`: only the continuation's
positions go through the output layer); generation runs `batch_size` rows at a time through the
compiled engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import lm_eval.models  # noqa: F401  (lm-eval's own models first: it only loads them into an empty registry)
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from jaxlm.errors import JaxlmError

BUCKET = 32  # padded widths are multiples of this: few compiled shapes


def _bucket(n: int, m: int) -> int:
    return -(-n // m) * m


def _bool_arg(value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


@register_model("jaxlm")
class JaxlmLM(TemplateLM):
    """model_args: path (model dir, run dir or checkpoint step), batch_size (default 8),
    max_length (default the model's context), add_bos_token, cache_dtype."""

    def __init__(self, path: str | None = None, pretrained: str | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, add_bos_token: bool | str | None = None, cache_dtype: str = "auto",
                 lm=None, **unused):
        super().__init__()
        # lazy: registering the jaxlm model with lm-eval (`import jaxlm.eval`) must not load JAX
        from jaxlm.inference import load

        if lm is None:
            path = path or pretrained
            if path is None:
                raise JaxlmError("the jaxlm lm-eval model needs path=MODEL_DIR in --model_args")
            lm = load(path, cache_dtype=cache_dtype)
        self.lm, self.tok = lm, lm.tokenizer
        if str(batch_size).startswith("auto"):
            batch_size = 8  # no memory probing: a fixed default
        self._batch_size = int(batch_size)
        if self._batch_size < 1:
            raise JaxlmError(f"batch_size must be >= 1, got {batch_size}")
        self._max_length = int(max_length or lm.cfg.max_context)
        add_bos_token = _bool_arg(add_bos_token)
        self.add_bos_token = self.tok.adds_bos if add_bos_token is None else add_bos_token
        self._bos_text = self.tok.decode([self.prefix_token_id]) if self.prefix_token_id >= 0 else ""
        self._specials = set(self.tok.special_tokens.values())

    # ---- what TemplateLM and the harness ask for ----------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id >= 0 else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return f"jaxlm-{self.tok.kind}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:  # the default: BOS as the tokenizer adds it, unless the text has it
            add_special_tokens = self.add_bos_token and not (self._bos_text and string.startswith(self._bos_text))
        ids = self.tok.encode_special(string)  # special-token text reads as ids, as in transformers
        return ([self.tok.bos_id] + ids) if add_special_tokens and self.tok.bos_id >= 0 else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self._specials]
        return self.tok.decode(list(tokens))

    # ---- scoring ------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids) -> (log p, is greedy)."""
        rows = []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc:
                raise JaxlmError("a loglikelihood request has an empty continuation")
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
            rows.append((whole, len(continuation_enc)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # longest first, as lm-eval does
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            # Widths and the number of scored positions are bucketed and the batch padded to full size,
            # so few shapes get compiled.
            width = min(_bucket(max(len(rows[i][0]) for i in chunk), BUCKET), self.max_length + 1)
            k = min(_bucket(max(rows[i][1] for i in chunk), 8), width - 1)
            ids = np.zeros((self.batch_size, width), np.int32)
            ends = np.full((self.batch_size,), k + 1, np.int32)
            for r, i in enumerate(chunk):
                whole = rows[i][0]
                ids[r, :len(whole)] = whole
                ends[r] = len(whole)
            logprobs, top = self.lm.scorer.continuation_scores(ids, ends, k)
            for r, i in enumerate(chunk):
                n = rows[i][1]  # the continuation: the last n of the k scored tokens
                results[i] = (float(logprobs[r, k - n:].sum(dtype=np.float64)), bool(top[r, k - n:].all()))
                self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in [req.args for req in requests]:
            windows = [(None,) + make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            total = sum(lp for lp, _ in self._loglikelihood_tokens(windows)) if windows else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # ---- generation ---------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [req.args for req in requests]
        results: list[str | None] = [None] * len(args)
        groups: dict[str, list[int]] = {}  # one batch never mixes generation settings
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        for indices in groups.values():
            until, max_gen, sampling = self._generation_settings(args[indices[0]][1])
            max_ctx = self.max_length - max_gen
            if max_ctx < 1:
                raise JaxlmError(f"max_gen_toks {max_gen} leaves no room for a context in max_length "
                                 f"{self.max_length}")
            encoded = {i: self.tok_encode(args[i][0])[-max_ctx:] or [self.prefix_token_id] for i in indices}
            indices = sorted(indices, key=lambda i: -len(encoded[i]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                texts = self._generate_batch([encoded[i] for i in chunk], until, max_gen, sampling)
                for i, text in zip(chunk, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
        return results

    def _generation_settings(self, gen_kwargs: dict) -> tuple[list[str], int, dict]:
        kw = dict(gen_kwargs)
        until = kw.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        eos = self.tok.decode([self.eot_token_id]) if self.eot_token_id >= 0 else None
        if eos and eos not in until:
            until.append(eos)
        max_gen = int(kw.pop("max_gen_toks", kw.pop("max_new_tokens", 256)))
        temperature = float(kw.pop("temperature", 0.0) or 0.0)
        if not kw.pop("do_sample", temperature > 0):
            temperature = 0.0
        sampling = {"temperature": temperature, "top_p": float(kw.pop("top_p", 1.0) or 1.0),
                    "top_k": int(kw.pop("top_k", 0) or 0), "seed": int(kw.pop("seed", 0) or 0)}
        return until, max_gen, sampling

    def _generate_batch(self, prompts: list[list[int]], until: list[str], max_gen: int, sampling: dict) -> list[str]:
        rows: list[list[int]] = [[] for _ in prompts]
        texts = ["" for _ in prompts]
        stop = [t for t in until if t]
        # Stop the compiled loop once every row holds a stop string: decoding is checked on the host
        # each step (the engine's streaming callback), only for rows still running.
        def on_token(step, tokens, done):
            for r, t in enumerate(tokens):
                if t >= 0 and not any(s in texts[r] for s in stop):
                    rows[r].append(int(t))
                    texts[r] = self.tok_decode(rows[r])
            return all(bool(d) or any(s in texts[r] for s in stop) for r, d in enumerate(done))

        out = self.lm.generate_ids(prompts, max_gen, stop_tokens=[self.eot_token_id],
                                   on_token=on_token if stop else None,
                                   **sampling)
        replies = []
        for new in out.tokens:
            text = self.tok_decode(new)
            for s in stop:
                text = text.split(s)[0]
            replies.append(text)
        return replies
