"""`jaxlm compile CONFIG --topology v5e:2x4 | h100:1x1x8 [--mesh.fsdp 8 ...] [--set ...] [--decode | --serve]`:
build the train step (or, with --decode, the generate programs; with --serve, the serving engine's paged decode
step) for a TPU slice or an NVIDIA GPU node on any host,
with no weights allocated, and print what one device needs against its memory and which kernels the
program holds. Exit 2 when it does not fit.

Needs libtpu for TPUs (`pip install 'jaxlm[tpu]'`) and JAX's CUDA plugin for GPUs
(`pip install 'jaxlm[gpu-aot]'`); the host's own devices are not used.
"""

from __future__ import annotations

from jaxlm.cli.common import add_config_args, positive_int
from jaxlm.config import load_run_config
from jaxlm.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile the train step (or --decode programs) for a TPU slice or GPU "
                                       "node: per-device memory, kernels, fits or not")
    add_config_args(p, required=True)
    p.add_argument("--topology", required=True,
                   help="TPU slice (v5e:2x2, v5e:2x4, v5p:2x2x1) or GPU node as CHIP:SLICESxHOSTSxGPUS with CHIP "
                        "a100, h100, h200 or b200 (h100:1x1x8, h200:1x1x1)")
    for axis in ("data", "fsdp", "tensor"):
        p.add_argument(f"--mesh.{axis}", dest=f"mesh_{axis}", type=int, default=None,
                       help=f"mesh {axis} size (default: the config's; -1 fills the slice)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch (train.batch_size)")
    p.add_argument("--seq-len", type=positive_int, default=None, help="sequence length (train.seq_len)")
    p.add_argument("--decode", action="store_true", help="compile prefill + the decode loop instead")
    p.add_argument("--prompt-len", type=positive_int, default=1024, help="--decode: prompt tokens per row")
    p.add_argument("--new-tokens", type=positive_int, default=256, help="--decode: tokens to generate")
    p.add_argument("--serve", action="store_true", help="compile the serving engine's paged decode step instead, "
                                                        "and report the KV pages that fit beside the weights")
    p.add_argument("--max-slots", type=positive_int, default=8, help="--serve: decode slots (rows per step)")
    p.add_argument("--page-size", type=positive_int, default=16, help="--serve: tokens per KV page")
    p.add_argument("--num-pages", type=positive_int, default=None,
                   help="--serve: pages in the program (default: max-slots rows of the full context)")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax  # lazy: keeps `jaxlm --help` fast (the AOT programs and the mesh load JAX)

    # The host's own devices are not used. Starting JAX on the CPU only keeps accelerator plugins from
    # probing this host: CUDA's plugin registers for compiling only when CUDA is not asked for, where on
    # a host without a GPU it would fail its start-up check and print a traceback.
    jax.config.update("jax_platforms", "cpu")
    # lazy: as above
    from jaxlm.aot import DoesNotFit, chip_hbm_bytes, compile_and_report, decode_programs, topology_devices
    from jaxlm.ops import choices
    from jaxlm.parallel import make_mesh

    run_cfg = _run_config(args)
    devices = topology_devices(args.topology)
    mc = run_cfg.mesh
    mesh = make_mesh(mc.data, mc.fsdp, mc.tensor, devices)
    hbm = chip_hbm_bytes(devices[0])
    _print_header(run_cfg, args.topology, devices, mesh, hbm)
    notes = {}  # program name -> a function of its report giving one more line
    if args.serve:
        from jaxlm.aot.serve import serve_program  # lazy: as above

        name, lower, notes[name] = serve_program(run_cfg, mesh, args.max_slots, args.page_size, args.num_pages)
        programs = [(name, lower)]
    elif args.decode:
        programs = decode_programs(run_cfg, mesh, run_cfg.train.batch_size, args.prompt_len, args.new_tokens)
    else:
        programs = [_train_lowering(run_cfg, mesh)]
    previous = None
    for name, lower in programs:
        with choices.recording() as sites:
            lowered = lower(previous)
        report = compile_and_report(name, lowered, hbm, choices.summary(sites))  # DoesNotFit: one line, exit 2
        previous = report.output_shardings
        print("\n".join(report.lines()))
        if name in notes:
            print(notes[name](report, hbm))
        if report.fits is False:
            raise DoesNotFit(f"{name} does not fit: needs {report.peak_bytes / 2 ** 30:.2f} GiB of "
                             f"{hbm / 2 ** 30:.2f} GiB per device; lower the batch, shard more or set model.remat")
    return 0


def _run_config(args):
    """The run config with the command's mesh, batch and sequence flags applied as overrides."""
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
    return run_cfg


def _print_header(run_cfg, topology: str, devices: list, mesh, hbm: int | None) -> None:
    print(f"{run_cfg.model.name} on {topology} ({len(devices)} x {devices[0].device_kind}), "
          f"mesh {dict(mesh.shape)}, attention {run_cfg.model.attention_impl}, norm {run_cfg.model.norm_impl}, "
          f"remat {run_cfg.model.remat}")
    if devices[0].platform == "gpu" and hbm is not None:
        from jaxlm.aot.gpu import gpu_memory_note  # lazy: loads JAX, as in run

        print(gpu_memory_note(devices[0]))


def _train_lowering(run_cfg, mesh):
    """(name, lower) for the train step, in the form of decode_programs' entries."""
    from jaxlm.aot.programs import train_program, train_program_name  # lazy: loads JAX, as in run

    return train_program_name(run_cfg.train), lambda _: train_program(run_cfg, mesh)[1]
