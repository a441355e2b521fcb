"""`jaxlm quantize --ckpt DIR --bits 4 --group 128 --out DIR2`: weight-only post-training quantization."""

from __future__ import annotations

from jaxlm.errors import ConfigError
from jaxlm.quant.config import QuantConfig


def register(sub) -> None:
    p = sub.add_parser("quantize", help="write a weight-quantized copy of a model (int8 / int4 / 3 / 2-bit)")
    p.add_argument("--ckpt", required=True, help="model dir or run dir to quantize")
    p.add_argument("--out", required=True, help="output model dir (loads in generate / eval / model-info)")
    p.add_argument("--bits", type=int, required=True, help="weight bits of the linear layers: 8, 4, 3 or 2")
    p.add_argument("--group", default=None,
                   help="input rows per scale: 32, 64, 128, 256 or 'channel' (default: channel for 8 bits, "
                        "128 otherwise)")
    p.add_argument("--asym", action="store_true", help="asymmetric (scale + zero point) instead of symmetric")
    p.add_argument("--method", choices=["rtn", "gptq"], default="rtn",
                   help="round-to-nearest, or GPTQ error compensation on calibration text")
    p.add_argument("--calib", default=None, help="GPTQ calibration text: .txt file or directory "
                                                 "(default: the bundled training corpus)")
    p.add_argument("--embed-bits", type=int, default=16, help="embeddings / output head: 16 (keep) or 8")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: keeps `jaxlm --help` fast (quantization loads JAX)
    from jaxlm.checkpoint.quantized import quantize_model_dir
    if args.group in (None, ""):
        group = None if args.bits == 8 else 128
    elif args.group in ("channel", "none"):
        group = None
    else:
        try:
            group = int(args.group)
        except ValueError:
            raise ConfigError(f"--group must be an integer or 'channel', got {args.group!r}") from None
    qcfg = QuantConfig(bits=args.bits, group_size=group, symmetric=not args.asym, method=args.method,
                       embed_bits=args.embed_bits)
    out = quantize_model_dir(args.ckpt, args.out, qcfg, calib_source=args.calib, overwrite=args.overwrite)
    # lazy: as above
    from jaxlm.checkpoint import load_model
    from jaxlm.quant.model import describe_scheme, storage_report

    _, model = load_model(out)
    rep = storage_report(model)
    print(f"wrote {out}: {rep['bits_per_quantized_weight']:.3f} bits per quantized weight, "
          f"{rep['total_bytes'] / 2**20:.2f} MiB total, {rep['bytes_per_param']:.3f} bytes per parameter")
    print(describe_scheme(model, qcfg))  # says where a group size did not divide a weight's input dim
    return 0
