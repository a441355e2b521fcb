"""A model directory: the weights of one model and the config that built it.

    DIR/config.yaml      the full run config (model section and the rest)
    DIR/params/          Orbax checkpoint of the nnx.Param state, one leaf per layer (params_io),
                         written a few leaves at a time
    DIR/tokenizer.*      the tokenizer files, when known

Written through `jaxlm.outputs` (a temporary sibling, renamed when complete), so DIR is either
absent or complete, and never one of the inputs it was made from.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np
import yaml
from flax import nnx

from jaxlm.checkpoint.locate import locate
from jaxlm.checkpoint.params_io import ParamWriter, nest, quiet_absl
from jaxlm.config import RunConfig, from_dict, to_dict
from jaxlm.errors import ArgumentTypeError, JaxlmError, short_repr
from jaxlm.lora.config import LoraConfig
from jaxlm.model import ModelConfig, stored_tree
from jaxlm.model.layouts import flatten, is_per_layer, per_layer_leaves, restack
from jaxlm.outputs import output_path
from jaxlm.variants import model_for

TOKENIZER_GLOBS = ("tokenizer*", "*.tiktoken")


def tokenizer_files(config_dir: str | Path) -> list[Path]:
    """The tokenizer files saved next to a model (copied along by every command that writes a new
    model dir from it)."""
    return sorted({f for g in TOKENIZER_GLOBS for f in Path(config_dir).glob(g) if f.is_file()})


def save_model(path: str | Path, run_cfg: RunConfig, model: nnx.Module, extra_files: list[str | Path] = (),
               overwrite: bool = False, inputs: list[str | Path] = ()) -> Path:
    """Write `model`'s parameters and `run_cfg` to the model directory `path` atomically. `inputs`:
    the paths the model was read from, which `path` must not overlap."""
    _check_args(path=path, run_cfg=run_cfg)
    if not isinstance(getattr(model, "cfg", None), ModelConfig):
        raise ArgumentTypeError(f"model must be a jaxlm model (an nnx.Module with its ModelConfig as .cfg), "
                                f"got {short_repr(model)}")
    params = flatten(stored_tree(model.cfg, nnx.state(model, nnx.Param).to_pure_dict()))  # unpadded layers
    leaves = ((p, np.asarray(x)) for p, x in per_layer_leaves(params))  # one layer on the host at a time
    return write_model_dir(path, run_cfg, leaves, extra_files, overwrite, inputs)


def write_model_dir(path: str | Path, run_cfg: RunConfig, leaves: Iterable[tuple[tuple[str, ...], object]],
                    extra_files: list[str | Path] = (), overwrite: bool = False,
                    inputs: list[str | Path] = ()) -> Path:
    """Write a model directory from (leaf path, array) pairs in the per-layer layout (params_io), taken
    one at a time from `leaves` (a generator keeps only a few in memory). `path` is either absent or
    complete afterwards."""
    path = Path(path).absolute()
    with output_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
        writer = ParamWriter(tmp / "params")
        writer.put_all(leaves)
        with quiet_absl():
            writer.close()
        for f in extra_files:
            shutil.copy(f, tmp / Path(f).name)
    return path


def _check_args(path, run_cfg=None, model_config=None) -> None:
    """save_model's and load_model's arguments, each named when it is of the wrong type."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a path (a str or pathlib.Path), got {short_repr(path)}")
    if run_cfg is not None and not isinstance(run_cfg, RunConfig):
        raise ArgumentTypeError(f"run_cfg must be a jaxlm.config.RunConfig (e.g. from load_run_config), got "
                                f"{short_repr(run_cfg)}")
    if model_config is not None and not isinstance(model_config, ModelConfig):
        raise ArgumentTypeError(f"model_config must be a jaxlm.model.ModelConfig, got {short_repr(model_config)}")


def read_config(path: str | Path) -> RunConfig:
    path = Path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise JaxlmError(f"{path} is not a jaxlm model directory (no config.yaml); give a directory written by "
                         f"`jaxlm train` or `jaxlm convert from-hf`")
    try:
        data = yaml.safe_load(cfg_file.read_text())
        return from_dict(RunConfig, data if data is not None else {})
    except (yaml.YAMLError, UnicodeDecodeError, JaxlmError) as e:
        detail = str(e).splitlines()[0] if isinstance(e, JaxlmError) else f"not valid YAML ({type(e).__name__})"
        raise JaxlmError(f"{cfg_file}: {detail}; restore the config.yaml this directory was written with") from None


def load_model(path: str | Path, run_cfg: RunConfig | None = None,
               model_config=None) -> tuple[RunConfig, nnx.Module]:
    """Read a model dir, a run dir (latest step) or RUN_DIR/checkpoints/<step> -> (run config, model).

    Only parameters are restored. With `model_config`, that architecture is built instead of the
    saved one (and no LoRA is applied), e.g. to start a run from a model dir; shapes must match.
    The model comes in the stored layout (`ModelConfig.stored()`: no layer buckets), the one weight
    transforms (quantization, LoRA, export) work on; `jaxlm.model.to_bucketed` pads it for speed.
    """
    # lazy: Orbax (and metadata, which imports it) loads on the first read, not with `import jaxlm.checkpoint`
    import orbax.checkpoint as ocp

    from jaxlm.checkpoint.metadata import check_param_shapes, corrupt, saved_param_shapes

    _check_args(path=path, run_cfg=run_cfg, model_config=model_config)
    config_dir, params_dir = locate(path)
    run_cfg = run_cfg or read_config(config_dir)
    # The structure the saved leaves restore into: a quantized dir (jaxlm quantize) holds codes and scales,
    # a LoRA run's checkpoint holds the adapters too.
    lora = run_cfg.lora if model_config is None else LoraConfig()
    model = model_for((model_config or run_cfg.model).stored(), run_cfg.quant, lora, abstract=True)
    graphdef, abstract_state = nnx.split(model)
    target = nnx.state(model, nnx.Param).to_pure_dict()
    with quiet_absl():
        saved = saved_param_shapes(params_dir)
        layered = is_per_layer(tuple(k.split("/")) for k in saved)
        disk = nest(dict(per_layer_leaves(flatten(target), lambda x, j: jax.ShapeDtypeStruct(x.shape[1:], x.dtype)))) \
            if layered else target
        check_param_shapes(saved, disk, str(params_dir))
        # Onto this process's first device: a run checkpoint remembers the devices it was saved from
        # (a pod's, another process's), which Orbax would otherwise try to restore onto.
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        disk = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), disk)
        with ocp.StandardCheckpointer() as ckptr:
            try:
                params = ckptr.restore(params_dir, disk)
            except (ValueError, KeyError) as e:
                raise JaxlmError(f"weights in {path} do not match its config: {str(e).splitlines()[0]}") from None
            except Exception as e:  # Orbax and tensorstore raise plain Exceptions on damaged files
                raise corrupt(params_dir, e) from None
    if layered:
        params = restack(target, flatten(params))
    abstract_state.replace_by_pure_dict(params)
    return run_cfg, nnx.merge(graphdef, abstract_state)
