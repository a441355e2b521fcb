"""One record per platform holding every decision that depends on where a program runs.

`policy(platform)` is read by every op that behaves differently on a CPU, GPU or TPU, so the
choices and their reasons sit here, not as platform branches in each op. What each kernel choice
rests on is said in `KERNEL_BASIS`: "measured" (run on the hardware), "compiled" (built by the
platform's real compiler on a CPU host: memory and kernel calls known, speed not), or "reasoned".
Which kernel each traced site actually took, and why when it fell back, is recorded by
`jaxlm.ops.choices`; the trainer logs it at its first compile, `jaxlm compile` and `model-info`
print it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Policy:
    # What impl "auto" picks per op: attention, rms_norm, qmatmul -> "xla" | "pallas" | "cudnn".
    kernels: dict[str, str]
    # `ops.dense`: an einsum whose contraction is x's trailing axes runs as one 2-D dot_general (True), or
    # as the einsum as written (False).
    dense_as_2d_dot: bool
    # `ops.quantized_matmul` on the XLA path: "streamed" dequantizes a chunk of K at a time (never the
    # whole weight); "reference" dequantizes the weight and runs one dot.
    xla_qmatmul: str
    # `kv_cache.update_layer` for one new token in each of several rows: "select" writes it with a select
    # over the slot axis, "update_slice" with a per-row dynamic_update_slice.
    cache_write_one_token: str
    # The Engine's layer layout for generation: "unroll" gives every layer its own weights, "scan" runs
    # each group of stacked layers as one lax.scan.
    decode_layers: str
    # `ops.cached_attention` in a 16-bit dtype computes in float32 (the platform has no batched 16-bit dot).
    cached_attention_in_f32: bool
    # The model's lax.scan over a group of stacked layers (training, scoring, prefill in the stored layout)
    # is unrolled: the parameters stay stacked, the compiled program has one copy of the block per layer.
    unroll_layer_scan: bool


POLICIES: dict[str, Policy] = {
    "cpu": Policy(
        # Pallas only interprets on a CPU; XLA is the fast path. qmatmul "xla" is the chunked
        # qmatmul_streamed (benchmarks/results/decode.md; why not one dot: docs/inference.md).
        kernels={"attention": "xla", "rms_norm": "xla", "qmatmul": "xla"},
        # Given the 4-D einsum, XLA:CPU transposed and copied the attention output weight on every decode
        # step (docs/inference.md); the 2-D form's reshapes are free in row-major order.
        dense_as_2d_dot=True,
        xla_qmatmul="streamed",
        cache_write_one_token="update_slice",
        # Measured (docs/inference.md): a scanned decode step copies each layer's weights out of the stack
        # (cost analysis: 3x the weight bytes); unrolled, it reads them once.
        decode_layers="unroll",
        # XLA:CPU has no batched bf16 x bf16 -> f32 dot ("Unsupported element type for DotThunk"); it
        # would upcast a bf16 dot anyway.
        cached_attention_in_f32=True,
        # Measured (docs/training.md, "Where the step's time goes"): scanned, every layer's weights were
        # sliced out of the stack and every residual and weight gradient written back with a
        # dynamic-update-slice; unrolled, the tiny_uniform train step took 0.85x the time. Compile time
        # grows with depth, which a CPU's models keep small.
        unroll_layer_scan=True,
    ),
    "gpu": Policy(
        # Compiled for sm_90 (benchmarks/results/gpu_compile.md): packed training batches carry segment
        # ids, which jax.nn's cuDNN attention cannot take, so "cudnn" would run XLA attention in every
        # train step; the Triton kernel takes segments, GQA and windows and needs less memory than XLA's.
        # XLA fuses RMSNorm into its neighbours. qmatmul: the kernel reads the codes, XLA would write
        # the dequantized weight to HBM.
        kernels={"attention": "pallas", "rms_norm": "xla", "qmatmul": "pallas"},
        dense_as_2d_dot=True,
        xla_qmatmul="reference",
        cache_write_one_token="update_slice",
        # Reasoned, unmeasured: the GPU compiler feeds a dynamic slice of the stack straight into the
        # matmul, and a scan keeps compile time flat in depth.
        decode_layers="scan",
        cached_attention_in_f32=False,
        unroll_layer_scan=False,  # a scan keeps compile time flat in depth; the GPU step is unmeasured
    ),
    "tpu": Policy(
        # Compiled with libtpu, never run on a TPU: the Mosaic kernels keep attention O(T) in memory and
        # fuse the residual add into the norm; the quantized matmul reads the packed codes.
        kernels={"attention": "pallas", "rms_norm": "pallas", "qmatmul": "pallas"},
        # TPU arrays are tiled over their two minor dims, so the reshape is not free: the (D, 2, F) FFN
        # weight as (D, 2F) would be a relayout copy per step. The einsum as written reads weights in place.
        dense_as_2d_dot=False,
        xla_qmatmul="reference",
        # The per-row dynamic_update_slice becomes a scatter that the TPU compiler runs as a loop over rows,
        # whose result has another tiled layout than the stored cache, so every layer's K and V were copied
        # per step (docs/inference.md, "TPU, whole step"). A select keeps the layout.
        cache_write_one_token="select",
        decode_layers="scan",  # as on GPU (reasoned)
        cached_attention_in_f32=False,
        unroll_layer_scan=False,  # as on GPU: compile time flat in depth (a slice compile from any host)
    ),
}

KERNEL_BASIS: dict[str, dict[str, str]] = {
    "cpu": {"attention": "reasoned", "rms_norm": "reasoned", "qmatmul": "measured"},
    "gpu": {"attention": "compiled", "rms_norm": "reasoned", "qmatmul": "compiled"},
    "tpu": {"attention": "compiled", "rms_norm": "compiled", "qmatmul": "compiled"},
}


def policy(platform: str) -> Policy:
    """The record of "cpu" | "gpu" | "tpu" (`jaxlm.ops.target_platform()` gives the program's)."""
    return POLICIES[platform]
