"""Parameter and FLOP accounting.

Training FLOPs per token (PaLM appendix B convention): 6 * N + 12 * sum_l(Hq_l * hd) * T, where
N counts every matmul weight (embedding lookups excluded, the output head included; with tied
embeddings the shared matrix counts once, as the head) and T is the sequence length. The
attention term counts the full T x T score and value matmuls: causal masking is NOT halved,
so MFU figures are comparable with PaLM / MaxText.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: config.py imports this module
    from jaxlm.model.config import ModelConfig


def layer_params(cfg: ModelConfig) -> list[int]:
    d, hd = cfg.model_dim, cfg.head_dim
    out = []
    for s in cfg.layer_specs:
        qkv = d * (s.num_query_heads + 2 * s.num_kv_heads) * hd
        attn_out = s.num_query_heads * hd * d
        ffn = 3 * d * s.ffn_dim
        norms = 2 * d + (2 * hd if cfg.qk_norm else 0)
        out.append(qkv + attn_out + ffn + norms)
    return out


def total_params(cfg: ModelConfig) -> int:
    embed = cfg.vocab_size * cfg.model_dim
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.model_dim
    return embed + head + sum(layer_params(cfg)) + cfg.model_dim


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in a matmul per token: every layer weight but norms, plus the output head."""
    d, hd = cfg.model_dim, cfg.head_dim
    n = sum(d * (s.num_query_heads + 2 * s.num_kv_heads) * hd + s.num_query_heads * hd * d + 3 * d * s.ffn_dim
            for s in cfg.layer_specs)
    return n + cfg.vocab_size * d


def layer_flops(spec, model_dim: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs per token of one layer of sizes `spec` (a LayerSpec): 6 x its matmul weights +
    12 x Hq x hd x T of attention."""
    weights = model_dim * (2 * spec.num_query_heads + 2 * spec.num_kv_heads) * head_dim + 3 * model_dim * spec.ffn_dim
    return 6 * weights + 12 * spec.num_query_heads * head_dim * seq_len


def head_flops(cfg: ModelConfig) -> int:
    """Training FLOPs per token of the output projection (6 x V x D)."""
    return 6 * cfg.vocab_size * cfg.model_dim


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token at sequence length seq_len (see the module docstring)."""
    return sum(layer_flops(s, cfg.model_dim, cfg.head_dim, seq_len) for s in cfg.layer_specs) + head_flops(cfg)
