"""`jaxlm convert to-hf` / `from-hf` / `to-gguf` / `from-gguf`: checkpoints to and from Hugging Face
folders and llama.cpp's GGUF files."""

from __future__ import annotations

FORMATS = ("llama", "mistral", "phi3", "openelm")
DTYPES = ("float32", "bfloat16", "float16")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert checkpoints to / from Hugging Face (Llama, Phi-3, OpenELM)")
    conv = p.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    to = conv.add_parser("to-hf", help="jaxlm model or run directory -> Hugging Face model folder")
    to.add_argument("--ckpt", required=True, help="model dir, run dir (latest step) or RUN_DIR/checkpoints/<step>")
    to.add_argument("--out", required=True, help="output Hugging Face folder")
    to.add_argument("--format", choices=FORMATS, default=None,
                    help="layout (default: uniform -> llama (mistral with a sliding window), LongRoPE or a phi3 "
                         "name -> phi3, layerwise -> openelm)")
    to.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the written weights (default: as saved)")
    to.add_argument("--max-shard-size", default="5GB", help="split weights into files of at most this size")
    to.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    to.set_defaults(func=run_to_hf)
    fr = conv.add_parser("from-hf", help="Hugging Face model folder (safetensors) -> jaxlm model directory")
    fr.add_argument("--hf", required=True, help="Hugging Face model folder with config.json and *.safetensors")
    fr.add_argument("--out", required=True, help="output jaxlm model directory")
    fr.add_argument("--dtype", choices=DTYPES, default=None, help="parameter dtype (default: the checkpoint's)")
    fr.add_argument("--allow-pickle", action="store_true",
                    help="also read pickle *.bin weights (with torch.load(weights_only=True))")
    fr.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    fr.set_defaults(func=run_from_hf)
    register_gguf(conv)


def register_gguf(conv) -> None:
    to = conv.add_parser("to-gguf", help="jaxlm model or run directory -> GGUF file (llama.cpp, Ollama)")
    to.add_argument("--ckpt", required=True, help="model dir, run dir (latest step) or RUN_DIR/checkpoints/<step>")
    to.add_argument("--out", required=True, help="output .gguf file")
    to.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default=None,
                    help="GGML type of the 2-D weights (default: the saved float dtype; a quantized model: the type "
                         "its codes go into)")
    to.add_argument("--no-tokenizer", action="store_true", help="export the weights without a tokenizer")
    to.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    to.set_defaults(func=run_to_gguf)
    fr = conv.add_parser("from-gguf", help="GGUF file (llama, phi3, openelm) -> jaxlm model directory")
    fr.add_argument("--gguf", required=True, help="input .gguf file")
    fr.add_argument("--out", required=True, help="output jaxlm model directory")
    fr.add_argument("--keep-quantized", action="store_true",
                    help="q8_0 / q4_0 / q4_1 layer weights become jaxlm int8 / int4 weights instead of float")
    fr.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    fr.set_defaults(func=run_from_gguf)


def run_to_hf(args) -> int:
    # lazy: keeps `jaxlm --help` fast (conversion loads JAX and the checkpoint code)
    from jaxlm.convert import to_hf

    out = to_hf(args.ckpt, args.out, fmt=args.format, dtype=args.dtype, max_shard_size=args.max_shard_size,
                overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def run_from_hf(args) -> int:
    # lazy: keeps `jaxlm --help` fast (conversion loads JAX and the checkpoint code)
    from jaxlm.convert import from_hf

    out = from_hf(args.hf, args.out, dtype=args.dtype, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def run_to_gguf(args) -> int:
    # lazy: keeps `jaxlm --help` fast (conversion loads JAX and the checkpoint code)
    from jaxlm.convert.gguf_export import to_gguf

    out = to_gguf(args.ckpt, args.out, type_name=args.gguf_type, tokenizer=not args.no_tokenizer,
                  overwrite=args.overwrite)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def run_from_gguf(args) -> int:
    # lazy: as above
    from jaxlm.convert.gguf_import import from_gguf

    out = from_gguf(args.gguf, args.out, keep_quantized=args.keep_quantized, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
