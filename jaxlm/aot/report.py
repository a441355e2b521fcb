"""Compile a lowered program and read what one device needs: memory, FLOPs, bytes, seconds."""

from __future__ import annotations

import collections
import dataclasses
import re
import time

from jaxlm.aot.stderr import filtered_stderr
from jaxlm.errors import JaxlmError

GIB = 2 ** 30
_EXHAUSTED = re.compile(r"required for (.+?) \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")
_UNIT = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
# Custom-call targets of hand-written kernels in compiled HLO -> the family named in the report.
_KERNEL_TARGETS = {"__gpu$xla.gpu.triton": "triton", "tpu_custom_call": "mosaic", "mosaic_gpu": "mosaic-gpu"}
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')
_PALLAS_NAME = re.compile(r'op_name="[^"]*?([A-Za-z_0-9]+)\)*/pallas_call"')  # ".../jvp(rms_norm_fwd)/pallas_call"
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([A-Za-z_]+)")
_RESULT_SHAPE = re.compile(r"\s*(?:ROOT )?%\S+ = \(?(\w+\[[\d,]*\])")


class DoesNotFit(JaxlmError):
    """The program needs more memory per device than the chip has."""


@dataclasses.dataclass
class CompileReport:
    name: str
    compile_s: float
    argument_bytes: int  # per device: parameters, optimizer state, batch (donated buffers included)
    output_bytes: int
    alias_bytes: int  # outputs that reuse a donated argument's buffer
    temp_bytes: int  # activations and every other temporary
    code_bytes: int
    flops: float | None  # from XLA's cost analysis (custom kernels are not counted in it)
    bytes_accessed: float | None
    hbm_bytes: int | None  # usable HBM of one chip
    output_shardings: object = dataclasses.field(default=None, repr=False)  # what the next program takes
    kernels: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kernel_calls()
    sites: str = ""  # what each traced kernel site chose (jaxlm.ops.choices.summary)

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs that do not alias them + temporaries + code: the per-device footprint."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes

    def lines(self) -> list[str]:
        g = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
        out = [f"{self.name}: compiled in {self.compile_s:.1f} s",
               f"  per device: arguments {g(self.argument_bytes)}, temporaries {g(self.temp_bytes)}, "
               f"outputs not aliased {g(self.output_bytes - self.alias_bytes)}, code {g(self.code_bytes)}; "
               f"total {g(self.peak_bytes)}"]
        if self.flops is not None:
            out.append(f"  cost analysis: {self.flops:.3e} FLOPs, {self.bytes_accessed or 0:.3e} bytes accessed "
                       f"per device (XLA ops only; Pallas kernels are not counted)")
        if self.sites:
            out.append(f"  kernel sites: {self.sites}")
        out.append(f"  kernels in the compiled program: {kernel_line(self.kernels)}")
        if self.hbm_bytes is None:
            out.append("  fits: unknown (no HBM size for this chip)")
        elif self.fits:
            out.append(f"  fits: {g(self.peak_bytes)} of {g(self.hbm_bytes)} HBM per chip")
        else:
            out.append(f"  does not fit: needs {g(self.peak_bytes)} of {g(self.hbm_bytes)}")
        return out


def compile_and_report(name: str, lowered, hbm_bytes: int | None, sites: str = "") -> CompileReport:
    """lowered.compile() -> its report; an out-of-memory compile becomes DoesNotFit (one line)."""
    t0 = time.perf_counter()
    try:
        with filtered_stderr(drop=_memory_notice):
            compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED when the program cannot fit
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg:
            raise
        m = _EXHAUSTED.search(msg)
        if m is None:
            raise DoesNotFit(f"{name} does not fit: {msg.strip().splitlines()[0]}") from None
        need, have = float(m[2]) * _UNIT[m[3]], float(m[4]) * _UNIT[m[5]]
        raise DoesNotFit(f"{name} does not fit: needs {need / GIB:.2f} GiB of {have / GIB:.2f} GiB per device "
                         f"({m[1]}); lower train.batch_size, shard more (mesh.fsdp), or set model.remat") from None
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    return CompileReport(name, seconds, mem.argument_size_in_bytes, mem.output_size_in_bytes,
                         mem.alias_size_in_bytes, mem.temp_size_in_bytes, mem.generated_code_size_in_bytes,
                         cost.get("flops"), cost.get("bytes accessed"), hbm_bytes, compiled.output_shardings,
                         kernel_calls(compiled.as_text()), sites)


def _memory_notice(line: str) -> bool:
    """XLA's own log lines that a program exceeds its memory budget (rematerialization could not fit it,
    the scheduler's argument size): the report says the same in its own words."""
    return "hlo_rematerialization" in line or ("gpu_hlo_schedule" in line and "exceeds the base limit" in line)


def kernel_sites(hlo: str) -> list[tuple[str, str, str]]:
    """(family, kernel name, first result shape) of every hand-written kernel call in compiled HLO text:
    Pallas kernels (Triton on GPU, Mosaic on TPU) by their kernel name, cuDNN calls by their target."""
    sites = []
    for line in hlo.splitlines():
        target = _CUSTOM_CALL.search(line)
        if target is None or not (target[1].startswith("__cudnn$") or target[1] in _KERNEL_TARGETS):
            continue
        shape = _RESULT_SHAPE.match(line)
        if target[1].startswith("__cudnn$"):
            family, name = "cudnn", target[1].removeprefix("__cudnn$")
        else:
            named = _PALLAS_NAME.search(line) or _INSTRUCTION.match(line)
            family, name = _KERNEL_TARGETS[target[1]], named[1] if named else "?"
        sites.append((family, name, shape[1] if shape else "?"))
    return sites


def kernel_calls(hlo: str) -> collections.Counter:
    """(family, kernel name) -> count of the kernel calls in compiled HLO text (`kernel_sites`)."""
    return collections.Counter((family, name) for family, name, _ in kernel_sites(hlo))


def kernel_line(calls: collections.Counter) -> str:
    """"triton: flash_attention_fwd x1, rms_norm_fwd x5; cudnn: fmhaSoftmax x1", or "none (XLA only)"."""
    if not calls:
        return "none (XLA only)"
    families = {}
    for (family, name), n in sorted(calls.items()):
        families.setdefault(family, []).append(f"{name} x{n}")
    return "; ".join(f"{family}: {', '.join(names)}" for family, names in families.items())
