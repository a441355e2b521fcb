"""Ahead-of-time compilation for a TPU slice or an NVIDIA GPU node on any host (`jaxlm compile`).

libtpu compiles for a TPU slice with no TPU attached, and JAX's CUDA plugin for a GPU node with no
GPU (from a device description, `jaxlm.aot.gpu`): the devices of
`jax.experimental.topologies.get_topology_desc` form a mesh, and `lower(...).compile()` runs the
real compiler (Mosaic or Triton kernels included). The train step and the generate programs are
built from abstract shapes, so no weight is allocated, and their per-device memory and kernel calls
are read from the compiled program: the way to size a job before paying for it.
"""

from jaxlm.aot.programs import decode_programs, train_program
from jaxlm.aot.report import CompileReport, DoesNotFit, compile_and_report
from jaxlm.aot.topology import chip_hbm_bytes, topology_devices

__all__ = ["CompileReport", "DoesNotFit", "chip_hbm_bytes", "compile_and_report", "decode_programs",
           "topology_devices", "train_program"]
