"""The train step and the decode programs compiled for an H100 node on this CPU by XLA's GPU compiler
(JAX's CUDA plugin, compile-only devices from jaxlm/assets/gpu): the Triton kernels run under
shard_map on each device's shard, dispatch follows the mesh's platform, the report names the
kernels, and `jaxlm compile` refuses what does not fit."""

import importlib.util
import re
import subprocess
import sys

import pytest

from jaxlm.aot import topology_devices, train_program
from jaxlm.aot.report import kernel_calls, kernel_sites
from jaxlm.config import load_run_config
from jaxlm.errors import JaxlmError
from jaxlm.ops import choices
from jaxlm.parallel import make_mesh

needs_cuda_plugin = pytest.mark.skipif(importlib.util.find_spec("jax_plugins.xla_cuda12") is None,
                                       reason="JAX's CUDA plugin not installed (pip install -e '.[gpu-aot]'); "
                                              "CI installs it")

TINY = ["model.attention_impl=pallas", "model.norm_impl=pallas", "model.qk_norm=true", "model.num_layers=2",
        "model.compute_dtype=bfloat16", "train.seq_len=256"]
BATCH = 12  # no weight dimension of tiny_uniform is 12, so a [12, ...] array is a gathered batch


def test_without_the_cuda_plugin_the_error_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "cuda" in name else real(name, *a))
    with pytest.raises(JaxlmError, match=r"needs JAX's CUDA plugin; install the extra: pip install 'jaxlm\[gpu-aot\]'"):
        topology_devices("h100:1x1x1")


def test_a_gpu_topology_needs_three_sizes():
    with pytest.raises(JaxlmError, match=r"GPU topology 'h100:8': give CHIP:SLICESxHOSTSxGPUS, e.g. h100:1x1x8"):
        topology_devices("h100:8")


@pytest.fixture(scope="module")
def h100():
    return topology_devices("h100:1x1x4")


def _triton_calls(hlo: str) -> list[tuple[str, str]]:
    """(kernel name, first result shape) of every Triton custom call in compiled HLO text."""
    return [(name, shape) for family, name, shape in kernel_sites(hlo) if family == "triton"]


@needs_cuda_plugin
@pytest.mark.parametrize("mesh_shape", [(4, 1, 1), (1, 2, 2)])
def test_pallas_train_step_compiles_for_h100_with_one_triton_kernel_per_site_on_local_shards(h100, mesh_shape):
    data, fsdp, tensor = mesh_shape
    cfg = load_run_config("tiny_uniform", TINY + [f"train.batch_size={BATCH}", f"mesh.data={data}",
                                                  f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"])
    with choices.recording() as sites:
        _, lowered = train_program(cfg, make_mesh(data, fsdp, tensor, h100))
    hlo = lowered.compile().as_text()
    calls = _triton_calls(hlo)
    # One scanned layer group: attention fwd + its two backward kernels; norms: attn_norm, q_norm,
    # k_norm, the fused residual norm, the final norm, each forward and backward.
    assert sorted(n for n, _ in calls) == sorted(["flash_attention_fwd", "flash_attention_dq", "flash_attention_dkv"]
                                                 + ["rms_norm_fwd"] * 5 + ["rms_norm_bwd"] * 5)
    assert sorted(choices.summary(sites).split(", ")) == ["attention triton x1", "rms_norm triton x5"]
    local_b = BATCH // (data * fsdp)
    heads = 8 // tensor  # 8 query heads split over tensor
    shapes = dict(calls)
    assert shapes["flash_attention_fwd"] == f"bf16[{local_b},256,{heads},32]", shapes
    rows = {s.split("[")[1].split(",")[0] for n, s in calls if n.startswith("rms_norm")}
    assert rows == {str(local_b * 256), str(local_b * 256 * heads), str(local_b * 256 * heads // 2)}, rows
    gathered = re.findall(r"= \(?(?:f32|bf16)\[12,[^ ]* all-gather", hlo)
    assert not gathered, f"activations gathered over the batch axes: {gathered[:3]}"


@needs_cuda_plugin
def test_auto_on_a_gpu_mesh_picks_triton_attention_and_reports_the_cudnn_fallback(h100):
    auto = load_run_config("tiny_uniform", TINY[2:] + [f"train.batch_size={BATCH}", "mesh.data=4"])
    assert auto.model.attention_impl == "auto"
    with choices.recording() as sites:
        _, lowered = train_program(auto, make_mesh(4, 1, 1, h100))
    assert ("attention", "triton", "") in {(c.op, c.runs, c.fallback) for c in sites}
    assert "flash_attention_fwd" in lowered.as_text() and "interpret" not in lowered.as_text()
    cudnn = load_run_config("tiny_uniform", TINY[2:] + [f"train.batch_size={BATCH}", "mesh.data=4",
                                                        "model.attention_impl=cudnn"])
    with choices.recording() as sites:
        train_program(cudnn, make_mesh(4, 1, 1, h100))
    assert [c.fallback for c in sites if c.op == "attention"] == ["cuDNN through jax.nn takes no segment ids"]
    assert "attention xla [cuDNN through jax.nn takes no segment ids] x1" in choices.summary(sites)  # the report line


@needs_cuda_plugin
def test_cudnn_attention_compiles_to_cudnn_calls_forward_and_backward(h100):
    import jax
    import jax.numpy as jnp

    one = jax.sharding.SingleDeviceSharding(h100[0])
    q = jax.ShapeDtypeStruct((2, 512, 8, 128), jnp.bfloat16, sharding=one)

    def fwd_bwd(q, k, v):
        attend = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,  # noqa: E731
                                                              implementation="cudnn")
        return jax.grad(lambda *a: jnp.sum(attend(*a).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)

    calls = kernel_calls(jax.jit(fwd_bwd).lower(q, q, q).compile().as_text())
    assert {name for family, name in calls if family == "cudnn"} == {"fmhaSoftmax", "fmhaSoftmaxBackward"}, calls


@needs_cuda_plugin
def test_windowed_gqa_triton_kernels_compile_and_an_oversized_block_is_refused_by_the_gpu_compiler(h100):
    """Phi-3's head_dim 96 (a masked 128-wide tile) with GQA and a 700-token window, fwd + bwd; then the
    same kernel with 256 x 256 blocks, which need more shared memory than an H100 block may have."""
    import jax
    import jax.numpy as jnp

    from kernels_pallas.attention import flash_attention

    one = jax.sharding.SingleDeviceSharding(h100[0])
    q = jax.ShapeDtypeStruct((1, 1024, 8, 96), jnp.bfloat16, sharding=one)
    kv = jax.ShapeDtypeStruct((1, 1024, 2, 96), jnp.bfloat16, sharding=one)

    def fwd_bwd(**blocks):
        def grads(q, k, v):
            f = lambda q, k, v: jnp.sum(flash_attention(q, k, v, platform="gpu", sliding_window=700,  # noqa: E731
                                                        **blocks).astype(jnp.float32))
            return jax.grad(f, argnums=(0, 1, 2))(q, k, v)
        return jax.jit(grads).lower(q, kv, kv)

    names = sorted(name for _, name in kernel_calls(fwd_bwd().compile().as_text()))
    assert names == ["flash_attention_dkv", "flash_attention_dq", "flash_attention_fwd"], names
    with pytest.raises(Exception, match="Shared memory size limit exceeded"):
        fwd_bwd(block_q=256, block_k=256).compile()


@needs_cuda_plugin
def test_float32_attention_with_a_128_wide_head_fits_the_shared_memory_of_a_block(h100):
    """Llama 3's head in float32, fwd + bwd with the default blocks: 128 x 64 asked 354 KiB of the 227
    KiB an H100 block may have; the GPU default is 64 x 64 there."""
    import jax
    import jax.numpy as jnp

    from kernels_pallas.attention import flash_attention

    one = jax.sharding.SingleDeviceSharding(h100[0])
    q = jax.ShapeDtypeStruct((1, 256, 8, 128), jnp.float32, sharding=one)
    kv = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.float32, sharding=one)
    grads = jax.grad(lambda q, k, v: jnp.sum(flash_attention(q, k, v, platform="gpu")), argnums=(0, 1, 2))
    names = sorted(name for _, name in kernel_calls(jax.jit(grads).lower(q, kv, kv).compile().as_text()))
    assert names == ["flash_attention_dkv", "flash_attention_dq", "flash_attention_fwd"], names


@needs_cuda_plugin
@pytest.mark.parametrize("bits", [16, 4, pytest.param(8, marks=pytest.mark.slow)])  # int8: the same path
def test_decode_programs_compile_for_h100_with_and_without_int4_weights(h100, bits):
    from jaxlm.aot import compile_and_report, decode_programs

    cfg = load_run_config("tiny_uniform", ["model.num_layers=2", "model.compute_dtype=bfloat16",
                                           f"quant.bits={bits}", "quant.group_size=32", "mesh.data=4"])
    previous, kernels = None, []
    for name, lower in decode_programs(cfg, make_mesh(4, 1, 1, h100), batch_size=4, prompt_len=40, new_tokens=20):
        report = compile_and_report(name, lower(previous), hbm_bytes=None)
        previous = report.output_shardings
        kernels.append(report.kernels)
    # the 4 linear layers of one scanned group; the cache attention is XLA's (explicit positions)
    expected = {("triton", f"qmatmul_int{bits}"): 4} if bits < 16 else {}
    assert [dict(k) for k in kernels] == [expected, expected]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxlm.cli.main", "compile", *args], capture_output=True, text=True,
                          timeout=600)


@needs_cuda_plugin
def test_jaxlm_compile_for_h100_reports_the_kernels_and_refuses_what_does_not_fit():
    ok = _cli("tiny_uniform", "--topology", "h100:1x1x4", "--mesh.data", "4", "--batch-size", "8", "--seq-len",
              "128", "--set", "model.num_layers=2", "--set", "model.compute_dtype=bfloat16")
    assert ok.returncode == 0, ok.stderr
    assert "on h100:1x1x4 (4 x NVIDIA H100 80GB HBM3)" in ok.stdout
    assert "kernel sites: rms_norm xla x3, attention triton x1" in ok.stdout, ok.stdout
    assert "kernels in the compiled program: triton: flash_attention_dkv x1, flash_attention_dq x1, " \
           "flash_attention_fwd x1" in ok.stdout, ok.stdout
    assert re.search(r"fits: [\d.]+ GiB of 59.33 GiB", ok.stdout), ok.stdout
    assert ok.stderr == "", ok.stderr  # no CUDA plugin traceback on a host without a GPU
    # Llama 3 8B on one GPU: f32 weights and Adam's two moments alone are 90 GiB
    bad = _cli("llama3_8b", "--topology", "h100:1x1x1", "--batch-size", "1", "--seq-len", "2048")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "does not fit: needs" in bad.stderr and "Traceback" not in bad.stderr
