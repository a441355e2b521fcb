"""OpenELM in plain PyTorch: the model of Apple's HF layout, its loader and greedy generation.

Independent of the JAX code on purpose (it is the reference the conversion is tested against):
the per-layer sizes are recomputed here from config.json exactly as Apple's OpenELMConfig does.
Keys: transformer.token_embeddings, transformer.layers.{i}.{attn_norm, attn.qkv_proj, attn.q_norm,
attn.k_norm, attn.out_proj, ffn_norm, ffn.proj_1, ffn.proj_2}, transformer.norm, [lm_head].
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from jaxlm.errors import JaxlmError


def _make_divisible(v: float, d: int) -> int:
    n = max(d, int(v + d / 2) // d * d)
    return int(n + d if n < 0.9 * v else n)


def _linspace_rounded(lo_hi, n: int) -> list[float]:
    return [round(float(v), 2) for v in np.linspace(lo_hi[0], lo_hi[1], num=n, dtype=float)]


@dataclasses.dataclass(frozen=True)
class OpenELMSizes:
    """What the model needs from config.json, with per-layer sizes resolved."""

    vocab_size: int
    model_dim: int
    head_dim: int
    num_query_heads: tuple[int, ...]
    num_kv_heads: tuple[int, ...]
    ffn_dims: tuple[int, ...]
    qk_norm: bool
    tied: bool
    rope_theta: float
    eos_token_id: int

    @classmethod
    def from_config(cls, c: dict) -> "OpenELMSizes":
        n, d, hd, groups = c["num_transformer_layers"], c["model_dim"], c["head_dim"], c["num_gqa_groups"]
        qkv = c["qkv_multipliers"]
        mults = [qkv] * n if isinstance(qkv, numbers.Number) else _linspace_rounded(qkv, n)
        q_heads = [_make_divisible(d * m, hd * groups) // hd for m in mults]
        ffn = c["ffn_multipliers"]
        ffn = [ffn] * n if isinstance(ffn, numbers.Number) else _linspace_rounded(ffn, n) if len(ffn) == 2 else ffn
        return cls(c["vocab_size"], d, hd, tuple(q_heads), tuple(q // groups for q in q_heads),
                   tuple(_make_divisible(m * d, c["ffn_dim_divisor"]) for m in ffn),
                   bool(c.get("normalize_qk_projections", False)), bool(c.get("share_input_output_layers", False)),
                   float(c.get("rope_freq_constant", 10000)), int(c.get("eos_token_id", 2)))


class RMSNorm(nn.Module):
    """Normalised in float32, cast back, then times the weight (eps 1e-6, as Apple's)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope(x, positions, theta: float):
    """Rotate-half RoPE in float32. x (B, H, T, hd); positions (T,)."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    freqs = positions.double()[:, None] * inv_freq[None]  # (T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1).float()
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    return (x32 * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()).type_as(x)


class Attention(nn.Module):
    def __init__(self, s: OpenELMSizes, i: int):
        super().__init__()
        self.nq, self.nkv, self.hd, self.theta = s.num_query_heads[i], s.num_kv_heads[i], s.head_dim, s.rope_theta
        self.qkv_proj = nn.Linear(s.model_dim, (self.nq + 2 * self.nkv) * self.hd, bias=False)
        self.q_norm = RMSNorm(self.hd) if s.qk_norm else None
        self.k_norm = RMSNorm(self.hd) if s.qk_norm else None
        self.out_proj = nn.Linear(self.nq * self.hd, s.model_dim, bias=False)

    def forward(self, x, positions, cache):
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, self.nq + 2 * self.nkv, self.hd).transpose(1, 2)  # (B, H, T, hd)
        q, k, v = qkv.split([self.nq, self.nkv, self.nkv], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, positions, self.theta), rope(k, positions, self.theta)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        groups = self.nq // self.nkv
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # q head h -> kv h // G
        s = k.shape[2]
        mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)  # query at s-t+i sees keys <= it
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.nq * self.hd))


class FeedForward(nn.Module):
    def __init__(self, s: OpenELMSizes, i: int):
        super().__init__()
        self.proj_1 = nn.Linear(s.model_dim, 2 * s.ffn_dims[i], bias=False)
        self.proj_2 = nn.Linear(s.ffn_dims[i], s.model_dim, bias=False)

    def forward(self, x):
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class Layer(nn.Module):
    def __init__(self, s: OpenELMSizes, i: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(s.model_dim), Attention(s, i)
        self.ffn_norm, self.ffn = RMSNorm(s.model_dim), FeedForward(s, i)

    def forward(self, x, positions, cache):
        x = x + self.attn(self.attn_norm(x), positions, cache)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, s: OpenELMSizes):
        super().__init__()
        self.token_embeddings = nn.Embedding(s.vocab_size, s.model_dim)
        self.layers = nn.ModuleList(Layer(s, i) for i in range(len(s.num_query_heads)))
        self.norm = RMSNorm(s.model_dim)


class OpenELM(nn.Module):
    """tokens (B, T) -> float32 logits (B, T, V)."""

    def __init__(self, sizes: OpenELMSizes):
        super().__init__()
        self.sizes = sizes
        self.transformer = Transformer(sizes)
        self.lm_head = None if sizes.tied else nn.Linear(sizes.model_dim, sizes.vocab_size, bias=False)

    def forward(self, tokens, caches: list | None = None, start: int = 0):
        positions = torch.arange(start, start + tokens.shape[1])
        x = self.transformer.token_embeddings(tokens)
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, positions, None if caches is None else caches[i])
        x = self.transformer.norm(x)
        head = self.transformer.token_embeddings.weight if self.lm_head is None else self.lm_head.weight
        return (x @ head.T).float()

    @torch.no_grad()
    def generate(self, tokens, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with a KV cache; tokens (B, T) -> new tokens (B, max_new_tokens)."""
        caches = [[] for _ in self.transformer.layers]
        logits = self(tokens, caches)
        out, pos = [], tokens.shape[1]
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out.append(nxt)
            logits = self(nxt, caches, start=pos)
            pos += 1
        return torch.cat(out, dim=1)


def load_openelm(folder: str | Path, dtype: torch.dtype | None = None) -> OpenELM:
    """Build the model from config.json and load its safetensors weights (all keys, strictly)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise JaxlmError(f"{folder} has no config.json; give an OpenELM model folder")
    config = json.loads(cfg_path.read_text())
    if config.get("model_type") != "openelm":
        raise JaxlmError(f"{folder} holds model_type {config.get('model_type')!r}, not 'openelm'")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise JaxlmError(f"{folder} has no *.safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    with torch.device("meta"):
        model = OpenELM(OpenELMSizes.from_config(config))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise JaxlmError(f"{folder}: missing tensors {missing[:6]}, unexpected tensors {unexpected[:6]}")
    model = model.to(dtype) if dtype is not None else model
    return model.eval()
