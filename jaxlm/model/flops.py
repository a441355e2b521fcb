"""Parameter and FLOP accounting.

Training FLOPs per token (PaLM appendix B convention): 6 * N + 12 * sum_l(Hq_l * hd) * T, where
N counts every matmul weight (embedding lookups excluded, the output head included; with tied
embeddings the shared matrix counts once, as the head) and T is the sequence length. The
attention term counts the full T x T score and value matmuls: causal masking is NOT halved,
so MFU figures are comparable with PaLM / MaxText.
"""

from __future__ import annotations

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


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token at sequence length seq_len (see the module docstring)."""
    attn = 12 * sum(s.num_query_heads * cfg.head_dim for s in cfg.layer_specs) * seq_len
    return 6 * matmul_params(cfg) + attn
