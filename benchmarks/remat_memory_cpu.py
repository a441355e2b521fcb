"""Train-step temporaries on XLA:CPU for each remat policy, unrolled blocks vs one layer bucket: the CPU
rows of the remat table in docs/training.md.

    python benchmarks/remat_memory_cpu.py

tiny_layerwise (6 differently sized layers), compute bf16, xla attention, batch 4 x 1024 tokens, one CPU
device; compiles `build_train_program`'s step and prints `memory_analysis().temp_size_in_bytes`.
Memory does not depend on the load.
"""

from __future__ import annotations

import dataclasses

import jax


def main() -> None:
    from jaxlm.config import load_run_config
    from jaxlm.parallel import make_mesh
    from jaxlm.training.program import build_train_program

    base = load_run_config("tiny_layerwise")
    print("| layout | remat | blocks | temporaries (MiB) |\n|---|---|---|---|")
    for budget in (0.0, 0.5):
        for remat in ("none", "dots", "full"):
            model = dataclasses.replace(base.model, scan_pad_budget=budget, remat=remat, attention_impl="xla",
                                        norm_impl="xla", compute_dtype="bfloat16", max_context=1024)
            run = dataclasses.replace(base, model=model, train=dataclasses.replace(base.train, seq_len=1024,
                                                                                   batch_size=4))
            program = build_train_program(run, make_mesh(1, 1, 1, jax.devices()[:1]))
            compiled = program.step_fn.lower(*program.abstract_args(4, 1024)).compile()
            temps = compiled.memory_analysis().temp_size_in_bytes / 2**20
            layout = "unrolled" if budget == 0 else f"scan_pad_budget {budget}"
            print(f"| {layout} | {remat} | {len(model.scan_groups)} | {temps:.1f} |", flush=True)


if __name__ == "__main__":
    main()
