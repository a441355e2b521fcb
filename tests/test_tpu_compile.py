"""The train step compiled for a real TPU topology on this CPU (libtpu, Mosaic included): the kernels
run under shard_map on each device's shard, dispatch follows the mesh's platform, and `jaxlm compile`
reports memory and refuses what does not fit."""

import importlib.util
import re
import subprocess
import sys

import pytest

from jaxlm.aot import topology_devices, train_program
from jaxlm.aot.report import kernel_sites
from jaxlm.config import load_run_config
from jaxlm.errors import JaxlmError
from jaxlm.parallel import make_mesh

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[tpu]'); CI installs it")

TINY = ["model.attention_impl=pallas", "model.norm_impl=pallas", "model.qk_norm=true", "model.num_layers=2",
        "train.seq_len=256"]
BATCH = 12  # no weight dimension of tiny_uniform is 12, so a [12, ...] array is a gathered batch


def test_without_libtpu_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu -> ImportError
    with pytest.raises(JaxlmError, match=r"needs libtpu; install the extra: pip install 'jaxlm\[tpu\]'"):
        topology_devices("v5e:2x2")


@pytest.fixture(scope="module")
def v5e():
    return topology_devices("v5e:2x2")


def _kernel_calls(hlo: str) -> list[tuple[str, str]]:
    """(kernel name, first result shape) of every Mosaic custom call in compiled HLO text."""
    return [(name, shape) for family, name, shape in kernel_sites(hlo) if family == "mosaic"]


@needs_libtpu
@pytest.mark.parametrize("mesh_shape", [(1, 4, 1), (2, 1, 2)])
def test_pallas_train_step_compiles_for_v5e_with_one_kernel_per_site_on_local_shards(v5e, mesh_shape):
    data, fsdp, tensor = mesh_shape
    cfg = load_run_config("tiny_uniform", TINY + [f"train.batch_size={BATCH}", f"mesh.data={data}",
                                                  f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"])
    name, lowered = train_program(cfg, make_mesh(data, fsdp, tensor, v5e))
    hlo = lowered.compile().as_text()
    calls = _kernel_calls(hlo)
    names = sorted(n for n, _ in calls)
    # One scanned layer group: attention fwd + its two backward kernels; norms: attn_norm, q_norm,
    # k_norm, the fused residual norm, the final norm, each forward and backward.
    assert names == sorted(["flash_attention_fwd", "flash_attention_dq", "flash_attention_dkv"]
                           + ["rms_norm_fwd"] * 5 + ["rms_norm_bwd"] * 5), names
    local_b = BATCH // (data * fsdp)
    heads = 8 // tensor  # 8 query heads split over tensor
    shapes = dict(calls)
    assert shapes["flash_attention_dq"] == f"f32[{local_b},{heads},256,32]", shapes
    rows = {s.split("[")[1].split(",")[0] for n, s in calls if n.startswith("rms_norm")}
    assert rows == {str(local_b * 256), str(local_b * 256 * heads), str(local_b * 256 * heads // 2)}, rows
    gathered = re.findall(r"= \(?f32\[12,[^ ]* all-gather", hlo)
    assert not gathered, f"activations gathered over the batch axes: {gathered[:3]}"


@needs_libtpu
def test_sliding_window_attention_kernels_compile_for_v5e(v5e):
    """The windowed Mosaic kernels, forward and backward, through libtpu: Llama 3's head shape at
    2048 tokens with a 700-token window, so query blocks past it skip whole key blocks."""
    import jax
    import jax.numpy as jnp

    from kernels_pallas.attention import flash_attention

    one = jax.sharding.SingleDeviceSharding(v5e[0])
    q = jax.ShapeDtypeStruct((1, 2048, 8, 128), jnp.bfloat16, sharding=one)
    kv = jax.ShapeDtypeStruct((1, 2048, 2, 128), jnp.bfloat16, sharding=one)

    def fwd_bwd(q, k, v):
        f = lambda q, k, v: jnp.sum(flash_attention(q, k, v, platform="tpu", sliding_window=700)  # noqa: E731
                                    .astype(jnp.float32))
        return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

    names = [n for n, _ in _kernel_calls(jax.jit(fwd_bwd).lower(q, kv, kv).compile().as_text())]
    assert len(names) == 3 and all(any(k in n for n in names) for k in ("attention_fwd", "dq", "dkv")), names


@needs_libtpu
def test_auto_on_a_tpu_mesh_picks_the_mosaic_kernels(v5e):
    cfg = load_run_config("tiny_uniform", TINY[2:] + ["train.batch_size=4", "mesh.data=4"])
    assert cfg.model.attention_impl == "auto"
    _, lowered = train_program(cfg, make_mesh(4, 1, 1, v5e))
    text = lowered.as_text()
    assert "flash_attention_fwd" in text and "rms_norm_fwd" in text and "interpret" not in text


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxlm.cli.main", "compile", *args], capture_output=True, text=True,
                          timeout=600)


@needs_libtpu
def test_jaxlm_compile_cli_fits_decodes_and_fails_in_one_line():
    ok = _cli("tiny_uniform", "--topology", "v5e:2x2", "--mesh.data", "4", "--batch-size", "8", "--seq-len", "128",
              "--set", "model.num_layers=2")
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"train step \(batch 8 x 128 tokens\): compiled in [\d.]+ s", ok.stdout)
    assert re.search(r"fits: [\d.]+ GiB of 15.75 GiB HBM per chip", ok.stdout), ok.stdout
    assert re.search(r"per device: arguments [\d.]+ GiB, temporaries [\d.]+ GiB", ok.stdout)
    assert re.search(r"cost analysis: [1-9][\d.]*e\+\d+ FLOPs", ok.stdout), ok.stdout
    assert ok.stderr == "", ok.stderr  # libtpu's start-up noise is kept off the terminal
    dec = _cli("tiny_uniform", "--topology", "v5e:2x2", "--decode", "--batch-size", "4", "--prompt-len", "40",
               "--new-tokens", "20", "--set", "model.num_layers=2")
    assert dec.returncode == 0, dec.stderr
    assert "prefill (batch 4 x 64 prompt tokens, cache 96)" in dec.stdout and "decode loop (32 tokens)" in dec.stdout
    # attention is O(T) in memory on every path, so only the activations' sheer size can overflow: 1M tokens/chip
    bad = _cli("tiny_uniform", "--topology", "v5e:2x2", "--mesh.data", "4", "--batch-size", "1024", "--seq-len",
               "4096", "--set", "model.attention_impl=xla", "--set", "model.max_context=4096",
               "--set", "model.num_layers=1")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "does not fit: needs" in bad.stderr and "Traceback" not in bad.stderr
    typo = _cli("tiny_uniform", "--topology", "v5q:2x2")
    assert typo.returncode == 2 and "unknown TPU topology 'v5q:2x2'" in typo.stderr
