"""OpenELM for transformers (`trust_remote_code=True`), written by jaxlm beside the weights.

The math is Apple's OpenELM (apple/corenet `general_gpt.py`) as jaxlm implements it:
pre-norm blocks, RMSNorm in float32 (eps 1e-6), a fused `qkv_proj` split q | k | v, RMSNorm on q
and k before rotate-half RoPE (float32), grouped-query attention (query head h reads kv head
h // (n_q / n_kv)), a SwiGLU FFN whose `proj_1` holds gate | up, per-layer head counts and FFN
widths (layerwise scaling), logits from the token embeddings when they are shared.
Keys: transformer.token_embeddings, transformer.layers.{i}.{attn_norm, attn.qkv_proj,
attn.q_norm, attn.k_norm, attn.out_proj, ffn_norm, ffn.proj_1, ffn.proj_2}, transformer.norm,
lm_head (only when not shared).

Only stable transformers APIs are used (PreTrainedModel, GenerationMixin, DynamicCache.update /
get_seq_length, CausalLMOutputWithPast), so it runs on transformers 4.45+ and 5.x. transformers 5
renamed the cache argument and output field from `past_key_values` to `cache`: both are accepted.
No buffers (RoPE frequencies are computed per call), so loading on the meta device leaves nothing
uninitialised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_openelm import OpenELMConfig

CODE_VERSION = "1"
NORM_EPS = 1e-6  # fixed in Apple's OpenELMRMSNorm
# transformers 5 names the output's cache field `cache`; 4.x names it `past_key_values`.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class OpenELMRMSNorm(nn.Module):
    """Normalised in float32, cast back to the input dtype, then times the weight."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + NORM_EPS)).type_as(x) * self.weight


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) -> cos, sin (B, 1, T, hd) float32 (frequencies from float64, as jaxlm)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    freqs = positions.float()[..., None] * inv_freq.float()  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in float32. x (B, H, T, hd)."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


class OpenELMAttention(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_q, self.num_kv = config.num_query_heads[layer_idx], config.num_kv_heads[layer_idx]
        self.head_dim, self.theta = config.head_dim, float(config.rope_freq_constant)
        self.qkv_proj = nn.Linear(config.model_dim, (self.num_q + 2 * self.num_kv) * self.head_dim, bias=False)
        self.q_norm = OpenELMRMSNorm(self.head_dim) if config.normalize_qk_projections else None
        self.k_norm = OpenELMRMSNorm(self.head_dim) if config.normalize_qk_projections else None
        self.out_proj = nn.Linear(self.num_q * self.head_dim, config.model_dim, bias=False)
        self.out_proj.init_std = (config.model_dim * 2 * config.num_transformer_layers) ** -0.5

    def forward(self, x, rope, mask, cache: Cache | None):
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, self.num_q + 2 * self.num_kv, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        q, k, v = qkv.split([self.num_q, self.num_kv, self.num_kv], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, S, hd): past and new
        groups = self.num_q // self.num_kv
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, Hq, S, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))  # scale 1/sqrt(hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.num_q * self.head_dim))


class OpenELMFeedForward(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int):
        super().__init__()
        ffn_dim = config.ffn_dims()[layer_idx]
        self.proj_1 = nn.Linear(config.model_dim, 2 * ffn_dim, bias=False)  # rows: gate | up
        self.proj_2 = nn.Linear(ffn_dim, config.model_dim, bias=False)
        self.proj_2.init_std = (config.model_dim * 2 * config.num_transformer_layers) ** -0.5

    def forward(self, x):
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class OpenELMDecoderLayer(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int):
        super().__init__()
        self.attn_norm, self.attn = OpenELMRMSNorm(config.model_dim), OpenELMAttention(config, layer_idx)
        self.ffn_norm, self.ffn = OpenELMRMSNorm(config.model_dim), OpenELMFeedForward(config, layer_idx)

    def forward(self, x, rope, mask, cache):
        x = x + self.attn(self.attn_norm(x), rope, mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class OpenELMPreTrainedModel(PreTrainedModel):
    config_class = OpenELMConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["OpenELMDecoderLayer"]
    _supports_cache_class = True  # transformers 4.x: generate hands the model a DynamicCache
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        """OpenELM's init: linear std fan_in^-0.5, residual projections D^-0.5 (2L)^-0.5, embeddings D^-0.5."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=getattr(module, "init_std", module.in_features ** -0.5))
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)
        elif isinstance(module, OpenELMRMSNorm):
            nn.init.ones_(module.weight)


class OpenELMModel(OpenELMPreTrainedModel):
    def __init__(self, config: OpenELMConfig):
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers))
        self.norm = OpenELMRMSNorm(config.model_dim)
        self.post_init()

    def get_input_embeddings(self):
        return self.token_embeddings

    def set_input_embeddings(self, value):
        self.token_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, past_key_values=None, **kwargs):
        """-> (final hidden states (B, T, D), the cache or None)."""
        cache = past_key_values if cache is None else cache
        x = self.token_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        b, t, _ = x.shape
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache  # 5.x: not a config field
        if use_cache and cache is None:
            cache = DynamicCache()
        elif isinstance(cache, (tuple, list)):  # the legacy format: one (k, v) pair per layer
            legacy, cache = cache, DynamicCache()
            for i, (k, v) in enumerate(legacy):
                cache.update(k, v, i)
        past = cache.get_seq_length() if cache is not None else 0
        mask, positions = causal_mask_and_positions(attention_mask, b, t, past, x.device)
        positions = positions if position_ids is None else position_ids
        rope = rope_tables(positions, self.config.head_dim, float(self.config.rope_freq_constant))
        for layer in self.layers:
            x = layer(x, rope, mask, cache if use_cache else None)
        return self.norm(x), (cache if use_cache else None)


def causal_mask_and_positions(attention_mask, b: int, t: int, past: int, device):
    """Additive mask (B, 1, T, S) for T new queries after `past` cached keys (S = past + T), and the
    queries' positions (B, T). attention_mask (B, S), 1 = real token: padded keys are masked and
    positions count real tokens only, so a left-padded row runs at the positions it has unpadded."""
    s = past + t
    query_at = torch.arange(past, s, device=device)
    allowed = (torch.arange(s, device=device)[None, :] <= query_at[:, None])[None, None]  # (1, 1, T, S)
    if attention_mask is None:
        positions = query_at[None].expand(b, t)
    else:
        keys = attention_mask[:, -s:].bool()  # (B, S)
        allowed = allowed & keys[:, None, None, :]
        positions = (keys.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
    # finfo.min, not -inf: a fully masked query row (a padding position) gives finite garbage, never NaN.
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min), positions


class OpenELMForCausalLM(OpenELMPreTrainedModel, GenerationMixin):
    def __init__(self, config: OpenELMConfig):
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        shared = config.share_input_output_layers
        self.lm_head = None if shared else nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value):
        self.transformer.token_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, past_key_values=None, return_dict=None, **kwargs):
        """input_ids (B, T) -> float32 logits (B, T, V), the cache, and the next-token loss with labels."""
        hidden, cache = self.transformer(input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache,
                                         past_key_values)
        head = self.transformer.token_embeddings.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, head).float()
        loss = None
        if labels is not None:  # token i predicts label i + 1; -100 is ignored
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).long(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        """Feed only the tokens the cache has not seen (transformers 4.x and 5.x alike)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and not isinstance(cache, Cache):
            cache = None  # a legacy tuple from an old caller: recompute
        past = cache.get_seq_length() if cache is not None else 0
        return {"input_ids": input_ids[:, past:], "attention_mask": attention_mask, "cache": cache,
                "use_cache": use_cache}
