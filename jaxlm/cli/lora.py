"""`jaxlm lora merge|export`: fold trained adapters into the base, or write them in the PEFT format."""

from __future__ import annotations

from jaxlm.outputs import check_output


def register(sub) -> None:
    p = sub.add_parser("lora", help="merge LoRA adapters into the base, or export them for PEFT")
    lsub = p.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    m = lsub.add_parser("merge", help="write a model dir with W + (alpha/r) A B folded into the weights")
    m.add_argument("--ckpt", required=True, help="run dir or model dir of a LoRA run")
    m.add_argument("--out", required=True, help="output model dir (a plain model: no adapters, not quantized)")
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=run_merge)
    e = lsub.add_parser("export", help="write adapter_config.json + adapter_model.safetensors (PEFT)")
    e.add_argument("--ckpt", required=True, help="run dir or model dir of a LoRA run")
    e.add_argument("--out", required=True, help="output folder for the PEFT adapter")
    e.add_argument("--base-model", default="", help="base_model_name_or_path to record (e.g. the to-hf folder)")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=run_export)


def run_merge(args) -> int:
    # lazy: keeps `jaxlm --help` fast (the checkpoint code loads JAX)
    from jaxlm.checkpoint.lora_merged import write_merged

    out = write_merged(args.ckpt, args.out, overwrite=args.overwrite)
    print(f"wrote merged model {out}")
    return 0


def run_export(args) -> int:
    # lazy: keeps `jaxlm --help` fast (the checkpoint code loads JAX)
    from jaxlm.checkpoint.locate import locate
    from jaxlm.checkpoint.lora_merged import load_lora_model
    from jaxlm.convert.peft import export_peft
    config_dir = locate(args.ckpt)[0]  # config.yaml and the tokenizer
    inputs = [args.ckpt, config_dir]
    check_output(args.out, overwrite=args.overwrite, inputs=inputs)  # before loading the model
    run_cfg, model = load_lora_model(args.ckpt)
    out = export_peft(model, run_cfg.lora, args.out, base_model=args.base_model, overwrite=args.overwrite,
                      inputs=inputs, tokenizer_from=config_dir)
    print(f"wrote PEFT adapter {out}")
    return 0
