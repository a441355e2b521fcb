"""The kernel-report line: which kernel each site took, and why when it fell back (jaxlm.ops.choices).

The trainer logs it at its first compile (test_train), `jaxlm compile` prints it for TPU and GPU topologies
(test_tpu_compile, test_gpu_compile: Triton, Mosaic and the cuDNN fallback), and `model-info` here.
"""

import pytest

from jaxlm.cli.main import main


@pytest.mark.parametrize("impl, runs", [("xla", "attention xla x1"), ("pallas", "attention triton (interpret) x1")])
def test_model_info_names_the_kernel_each_site_takes(impl, runs, capsys):
    assert main(["model-info", "tiny_uniform", "--set", f"model.attention_impl={impl}",
                 "--set", f"model.norm_impl={impl}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("kernels on this host (cpu"))
    assert runs in line, line


def test_explicit_positions_fall_back_to_xla_and_say_why():
    import jax
    import jax.numpy as jnp

    from jaxlm import ops
    from jaxlm.ops import choices

    q = jax.ShapeDtypeStruct((1, 32, 2, 16), jnp.float32)
    pos = jax.ShapeDtypeStruct((1, 32), jnp.int32)
    with choices.recording() as sites:
        jax.eval_shape(lambda q, p: ops.attention(q, q, q, q_positions=p, kv_positions=p, impl="pallas"), q, pos)
    assert choices.summary(sites) == "attention xla [explicit positions] x1"
