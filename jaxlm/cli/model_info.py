"""`jaxlm model-info CONFIG`: per-layer sizes, parameter count and training FLOPs per token.

Shapes come from `jax.eval_shape`, so the 3B and 8B configs need no memory.
"""

from __future__ import annotations

import math

from jaxlm.cli.common import add_config_args, positive_int, start_backend
from jaxlm.config import load_run_config
from jaxlm.errors import ConfigError
from jaxlm.model import abstract_model, buckets, flops


def register(sub) -> None:
    p = sub.add_parser("model-info", help="per-layer table, parameter count and FLOPs of a model config")
    add_config_args(p)
    p.add_argument("--ckpt", default=None, help="a model or run dir instead of CONFIG (a quantized one reports "
                                                "its real bytes per parameter)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="sequence length for FLOPs (default: max_context)")
    p.add_argument("--gguf", default=None, choices=("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"),
                   help="also the size of this model's `jaxlm convert to-gguf --type TYPE` file, from shapes")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.ckpt:
        # lazy: keeps `jaxlm --help` fast (the checkpoint code loads JAX)
        from jaxlm.checkpoint.locate import locate
        from jaxlm.checkpoint.model_dir import read_config

        run_cfg = read_config(locate(args.ckpt)[0])
    elif args.config:
        run_cfg = load_run_config(args.config, args.overrides)
    else:
        raise ConfigError("give a CONFIG (e.g. openelm_270m) or --ckpt DIR")

    # lazy: after the config checks, so a bad config fails before JAX loads (and `jaxlm --help` stays fast)
    import jax

    from jaxlm.model.transformer import param_count

    start_backend()  # its start-up noise filtered (a CUDA plugin without a GPU)
    cfg = run_cfg.model
    seq_len = args.seq_len or cfg.max_context
    model = abstract_model(cfg.stored())  # the real (unpadded) parameters
    total = param_count(model)
    print(f"{cfg.name}: {cfg.num_layers} layers, model_dim {cfg.model_dim}, head_dim {cfg.head_dim}, "
          f"vocab {cfg.vocab_size}, {'tied' if cfg.tie_embeddings else 'untied'} embeddings")
    print(f"{'layer':>5} {'q heads':>8} {'kv heads':>8} {'ffn dim':>8} {'params':>14}")
    for i, (spec, n) in enumerate(zip(cfg.layer_specs, flops.layer_params(cfg))):
        print(f"{i:>5} {spec.num_query_heads:>8} {spec.num_kv_heads:>8} {spec.ffn_dim:>8} {n:>14,}")
    from flax import nnx  # lazy: as above

    state = nnx.state(model, nnx.Param)
    nbytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    print(describe_buckets(cfg, seq_len))
    print(f"total parameters: {total:,} ({total / 1e6:.2f}M), {nbytes / 2**30:.2f} GiB as {cfg.param_dtype}")
    per_tok = flops.train_flops_per_token(cfg, seq_len)
    print(f"training FLOPs/token at seq {seq_len}: {per_tok:.4g} (6N + 12*L*Hq*hd*T, causal not halved)")
    print(describe_kernels(run_cfg, min(seq_len, 256)))
    if run_cfg.quant.enabled:  # e.g. a `jaxlm quantize` output, or --set quant.bits=4 --set quant.group_size=128
        # lazy: as above (the checkpoint code and the quantized model load JAX)
        from jaxlm.checkpoint.locate import params_disk_bytes
        from jaxlm.quant.model import describe_storage

        print(describe_storage(run_cfg, params_disk_bytes(args.ckpt) if args.ckpt else None))
    if args.gguf:
        print(describe_gguf(cfg, args.gguf))
    return 0


def describe_kernels(run_cfg, seq_len: int) -> str:
    """The kernel each site of a packed training forward takes on this host's backend, and why it falls back
    (traced with abstract shapes: nothing is computed)."""
    # lazy: as above
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxlm.lora.config import LoraConfig
    from jaxlm.ops import choices, target_platform
    from jaxlm.variants import model_for

    graphdef, params = nnx.split(model_for(run_cfg.model, run_cfg.quant, LoraConfig(), abstract=True))
    tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    with choices.recording() as sites:
        jax.eval_shape(lambda p, t: nnx.merge(graphdef, p)(t, segment_ids=jnp.ones_like(t)), params, tokens)
    return f"kernels on this host ({target_platform()}, a packed batch of {seq_len} tokens): {choices.summary(sites)}"


def describe_gguf(cfg, type_name: str) -> str:
    # lazy: as above (the GGUF writer's tables load with the converter)
    from jaxlm.convert.gguf_export import size_from_shapes

    r = size_from_shapes(cfg, type_name)
    return (f"GGUF {type_name}: {r['total_bytes']:,} bytes ({r['total_bytes'] / 1e9:.2f} GB, "
            f"{r['total_bytes'] / 2**30:.2f} GiB) = {r['bits_per_weight']:.2f} bits per weight, plus the tokenizer's "
            f"keys (about 0.5 MB for a 32k vocabulary)")


def describe_buckets(cfg, seq_len: int) -> str:
    """How the layers are scanned: blocks to compile and, with layer buckets, their padding cost."""
    line = f"scanned blocks: {len(cfg.scan_groups)} (runs of identical layers: {len(cfg.stored_groups)})"
    if not cfg.bucketed:
        return line
    extra = buckets.overhead(cfg.buckets, cfg.model_dim, cfg.head_dim, seq_len, flops.head_flops(cfg))
    sizes = " ".join(str(b.count) for b in cfg.buckets)
    return (f"{line}; layer buckets (model.scan_pad_budget {cfg.scan_pad_budget:g}) of {sizes} layers, "
            f"padding costs +{100 * extra:.2f}% training FLOPs at seq {seq_len}")

