"""`jaxlm compile CONFIG --topology v5e:2x4 [--mesh.fsdp 8 ...] [--set ...] [--decode]`: build the
train step (or, with --decode, the generate programs) for a TPU slice on any host, with no weights
allocated, and print what one device needs against its HBM. Exit 2 when it does not fit.

Needs libtpu (`pip install 'jaxlm[tpu]'`); the host's own devices are not used.
"""

from __future__ import annotations

from jaxlm.cli.common import add_config_args, positive_int
from jaxlm.errors import ConfigError
from jaxlm.config import load_run_config


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile the train step (or --decode programs) for a TPU topology: "
                                       "per-device memory, FLOPs, fits or not")
    add_config_args(p, required=True)
    p.add_argument("--topology", required=True, help="TPU slice, e.g. v5e:2x2, v5e:2x4, v5p:2x2x1")
    for axis in ("data", "fsdp", "tensor"):
        p.add_argument(f"--mesh.{axis}", dest=f"mesh_{axis}", type=int, default=None,
                       help=f"mesh {axis} size (default: the config's; -1 fills the slice)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch (train.batch_size)")
    p.add_argument("--seq-len", type=positive_int, default=None, help="sequence length (train.seq_len)")
    p.add_argument("--decode", action="store_true", help="compile prefill + the decode loop instead")
    p.add_argument("--prompt-len", type=positive_int, default=1024, help="--decode: prompt tokens per row")
    p.add_argument("--new-tokens", type=positive_int, default=256, help="--decode: tokens to generate")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: keeps `jaxlm --help` fast (the AOT programs and the mesh load JAX)
    from jaxlm.aot import chip_hbm_bytes, compile_and_report, decode_programs, topology_devices, train_program
    from jaxlm.parallel import make_mesh

    overrides = list(args.overrides)
    overrides += [f"mesh.{a}={getattr(args, 'mesh_' + a)}" for a in ("data", "fsdp", "tensor")
                  if getattr(args, "mesh_" + a) is not None]
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.seq_len is not None:
        overrides.append(f"train.seq_len={args.seq_len}")
    run_cfg = load_run_config(args.config, overrides)
    context = run_cfg.model.max_context
    if args.decode and args.prompt_len + args.new_tokens > context:
        raise ConfigError(f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} is over the model's "
                          f"context of {context}; lower either so that they fit")
    devices = topology_devices(args.topology)
    mc = run_cfg.mesh
    mesh = make_mesh(mc.data, mc.fsdp, mc.tensor, devices)
    hbm = chip_hbm_bytes(devices[0])
    print(f"{run_cfg.model.name} on {args.topology} ({len(devices)} x {devices[0].device_kind}), "
          f"mesh {dict(mesh.shape)}, attention {run_cfg.model.attention_impl}, norm {run_cfg.model.norm_impl}, "
          f"remat {run_cfg.model.remat}")
    if args.decode:
        programs = decode_programs(run_cfg, mesh, run_cfg.train.batch_size, args.prompt_len, args.new_tokens)
    else:
        name, lowered = train_program(run_cfg, mesh)
        programs = [(name, lambda _: lowered)]
    previous = None
    for name, lower in programs:
        report = compile_and_report(name, lower(previous), hbm)  # DoesNotFit: one line, exit 2
        previous = report.output_shardings
        print("\n".join(report.lines()))
        if report.fits is False:
            # lazy: as above
            from jaxlm.aot import DoesNotFit

            raise DoesNotFit(f"{name} does not fit: needs {report.peak_bytes / 2 ** 30:.2f} GiB of "
                             f"{hbm / 2 ** 30:.2f} GiB per device; lower the batch, shard more or set model.remat")
    return 0
