"""The model's config: every architecture fact of the OpenELM / Llama 3 / Phi-3 families.

Per-layer sizes (query heads, kv heads, FFN width) are given either explicitly, as an int
(same for every layer) or a list of `num_layers` ints, or through OpenELM's layerwise-scaling
multipliers (`qkv_multipliers`, `ffn_multipliers`, `num_gqa_groups`), computed as CoreNet does
in `jaxlm.model.layerwise`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

from jaxlm.errors import ConfigError
from jaxlm.fields import bounded, check_fields
from jaxlm.model import buckets
from jaxlm.model.flops import head_flops
from jaxlm.model.spec import LayerSpec

__all__ = ["LayerSpec", "ModelConfig", "RopeScaling"]

KernelImpl = Literal["auto", "xla", "pallas", "cudnn"]
DType = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `type`: none | linear | llama3 | longrope (Phi-3 128k)."""

    type: Literal["none", "linear", "llama3", "longrope"] = "none"
    factor: float = bounded(1.0, gt=0)  # linear and llama3: divide frequencies (llama3: the low ones) by this
    low_freq_factor: float = bounded(1.0, gt=0)  # llama3
    high_freq_factor: float = bounded(4.0, gt=0)  # llama3
    original_max_position: int = bounded(8192, ge=1)  # llama3 and longrope: the pre-training context
    short_factor: tuple[float, ...] = bounded((), gt=0)  # longrope: head_dim/2 per-frequency divisors
    long_factor: tuple[float, ...] = bounded((), gt=0)  # longrope: used when the sequence exceeds original_max_position

    def __post_init__(self):
        check_fields(self, "model.rope_scaling")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "model"
    # sizes are array dimensions (below 2**31, as jax's int32 indices need); layers are listed one by one
    vocab_size: int = bounded(32000, ge=1, lt=2 ** 31)
    model_dim: int = bounded(256, ge=1, lt=2 ** 31)
    num_layers: int = bounded(4, ge=1, lt=2 ** 16)
    head_dim: int = bounded(64, ge=2, lt=2 ** 31)
    # Explicit per-layer sizes: an int (every layer) or a list of num_layers ints ...
    num_query_heads: int | tuple[int, ...] | None = bounded(None, ge=1, lt=2 ** 31)
    num_kv_heads: int | tuple[int, ...] | None = bounded(None, ge=1, lt=2 ** 31)
    ffn_dim: int | tuple[int, ...] | None = bounded(None, ge=1, lt=2 ** 31)
    # ... or OpenELM layerwise scaling (used for any of the three left unset above).
    qkv_multipliers: tuple[float, float] | None = bounded(None, gt=0)
    ffn_multipliers: tuple[float, float] | None = bounded(None, gt=0)
    num_gqa_groups: int = bounded(1, ge=1)  # query heads per kv head under layerwise scaling
    ffn_dim_divisor: int = bounded(256, ge=1)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k, before RoPE (OpenELM)
    tie_embeddings: bool = True  # logits = h @ embedding.T, no separate output head
    norm_eps: float = bounded(1e-6, gt=0)
    rope_theta: float = bounded(10000.0, gt=0)
    rope_scaling: RopeScaling = RopeScaling()
    max_context: int = bounded(2048, ge=1, lt=2 ** 31)
    # Sliding-window attention (Mistral, Phi-3): a token sees the last sliding_window positions, its
    # own included (key position > query position - sliding_window), as transformers masks it.
    # None: full causal attention.
    sliding_window: int | None = bounded(None, ge=1, note="null: full causal attention")
    activation: Literal["silu", "gelu"] = "silu"  # gate activation of the gated FFN (SwiGLU: silu)
    param_dtype: DType = "float32"
    compute_dtype: DType = "float32"
    bos_token_id: int = bounded(1, ge=0)
    eos_token_id: int = bounded(2, ge=0)
    # Kernels: "auto" picks per backend (see jaxlm.ops.dispatch); the XLA path is the reference.
    attention_impl: KernelImpl = "auto"
    norm_impl: KernelImpl = "auto"
    # Layers with identical sizes are stacked and run with one lax.scan (fewer blocks to compile).
    scan_layers: bool = True
    # Pad consecutive layers of different sizes (OpenELM) into buckets that each run as one scan: the
    # fewest buckets whose extra training FLOPs stay within this fraction of the model's (0.03: 3%).
    # Exact (jaxlm.model.buckets); checkpoints and model dirs keep the unpadded layers. 0: only
    # identical layers share a scan. Quantized and LoRA runs store and run unpadded (RunConfig sets 0).
    scan_pad_budget: float = bounded(0.0, ge=0, lt=1, note="a fraction of the training FLOPs, e.g. 0.03 for 3%")
    # Rematerialisation of each block in the backward pass: none | full | dots (save matmul outputs).
    remat: Literal["none", "full", "dots"] = "none"

    def __post_init__(self):
        check_fields(self, "model")
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even for RoPE (pairs of dimensions rotate), got {self.head_dim}")
        for field in ("num_query_heads", "num_kv_heads", "ffn_dim"):
            value = getattr(self, field)
            if isinstance(value, tuple) and len(value) != self.num_layers:
                raise ConfigError(
                    f"model.{field} has {len(value)} entries but model.num_layers is {self.num_layers}; "
                    f"give one value per layer or a single int")
        if (self.num_query_heads is None or self.num_kv_heads is None) and self.qkv_multipliers is None:
            raise ConfigError("set model.num_query_heads and model.num_kv_heads, or model.qkv_multipliers "
                              "for OpenELM layerwise scaling")
        if self.ffn_dim is None and self.ffn_multipliers is None:
            raise ConfigError("set model.ffn_dim, or model.ffn_multipliers for OpenELM layerwise scaling")
        for i, spec in enumerate(self.layer_specs):
            if spec.num_query_heads % spec.num_kv_heads:
                raise ConfigError(
                    f"layer {i}: {spec.num_query_heads} query heads are not divisible by {spec.num_kv_heads} kv "
                    f"heads; choose num_kv_heads dividing num_query_heads")
        rs = self.rope_scaling
        if rs.type == "longrope":
            half = self.head_dim // 2
            if len(rs.short_factor) != half or len(rs.long_factor) != half:
                raise ConfigError(f"model.rope_scaling short_factor and long_factor need head_dim/2 = {half} "
                                  f"values each, got {len(rs.short_factor)} and {len(rs.long_factor)}")

    @functools.cached_property
    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """Per-layer (query heads, kv heads, FFN width)."""
        # lazy: numpy loads only for OpenELM's per-layer widths, not with every config read
        from jaxlm.model import layerwise

        n = self.num_layers
        if self.num_query_heads is None or self.num_kv_heads is None:
            q, kv = layerwise.openelm_heads(n, self.model_dim, self.head_dim, self.qkv_multipliers,
                                            self.num_gqa_groups)
        q = _per_layer(self.num_query_heads, n) if self.num_query_heads is not None else q
        kv = _per_layer(self.num_kv_heads, n) if self.num_kv_heads is not None else kv
        if self.ffn_dim is not None:
            ffn = _per_layer(self.ffn_dim, n)
        else:
            ffn = layerwise.openelm_ffn_dims(n, self.model_dim, self.ffn_multipliers, self.ffn_dim_divisor)
        return tuple(LayerSpec(a, b, c) for a, b, c in zip(q, kv, ffn))

    @functools.cached_property
    def stored_groups(self) -> tuple[tuple[LayerSpec, int], ...]:
        """Runs of consecutive layers with identical sizes: ((spec, count), ...), the layout of
        checkpoints and model dirs (`groups/<g>`, unpadded). Without `scan_layers`, one per layer."""
        groups: list[list] = []
        for spec in self.layer_specs:
            if self.scan_layers and groups and groups[-1][0] == spec:
                groups[-1][1] += 1
            else:
                groups.append([spec, 1])
        return tuple((s, c) for s, c in groups)

    @functools.cached_property
    def buckets(self):
        """The scanned blocks of the model in memory (jaxlm.model.buckets.Bucket): padded runs of
        `stored_groups` under `scan_pad_budget`, or one bucket per run."""
        if self.scan_pad_budget > 0 and self.scan_layers and len(self.stored_groups) > 1:
            return buckets.plan(self.stored_groups, self.model_dim, self.head_dim, self.max_context,
                                self.scan_pad_budget, fixed_flops=head_flops(self))
        return tuple(buckets.Bucket(spec, ((spec, count),)) for spec, count in self.stored_groups)

    @property
    def scan_groups(self) -> tuple[tuple[LayerSpec, int], ...]:
        """The model's scanned blocks as ((padded spec, layers), ...): each is stored stacked and run with
        one lax.scan (and has one KV-cache entry). Equal to `stored_groups` unless `bucketed`."""
        return tuple((b.spec, b.count) for b in self.buckets)

    @property
    def bucketed(self) -> bool:
        """True when some block holds padded layers of different sizes (the in-memory layout differs
        from the stored one)."""
        return any(len(b.members) > 1 for b in self.buckets)

    def stored(self) -> "ModelConfig":
        """This architecture with the stored (unpadded) layout in memory too."""
        return dataclasses.replace(self, scan_pad_budget=0.0) if self.scan_pad_budget else self

    @property
    def uniform(self) -> bool:
        """True when every layer has the same sizes (Llama / Phi-3 style)."""
        return len(set(self.layer_specs)) == 1


def _per_layer(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,) * n
