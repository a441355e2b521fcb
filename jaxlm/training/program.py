"""The train step as a program: model, shardings, optimizer and the jitted step, built from
abstract shapes on a mesh, so nothing is allocated.

The trainer compiles it and feeds it real arrays; `jaxlm compile` (`jaxlm/aot/programs.py`) compiles it
for a TPU topology on any host, to size a job before paying for it. Both build it here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxlm.checkpoint import load_model
from jaxlm.errors import ConfigError
from jaxlm.model import bucketed_tree, stored_tree
from jaxlm.parallel import param_shardings, rules
from jaxlm.training.objectives import make_objective
from jaxlm.training.optimizer import make_optimizer, opt_state_shardings
from jaxlm.training.state import SplitModel, logical_axes, merge_trees, split_model
from jaxlm.training.step import BATCH_KEYS, jit_eval_step, jit_train_step, make_eval_step, make_train_step
from jaxlm.variants import model_for


@dataclasses.dataclass
class TrainProgram:
    mesh: Mesh
    split: SplitModel
    params_abs: dict  # trainable params (ShapeDtypeStructs)
    rest_abs: dict  # frozen variables
    opt_abs: object  # optimizer state
    p_shard: dict
    r_shard: dict
    o_shard: object
    tx: object
    schedule: object
    step_fn: object  # jitted step(state, rest, batch) -> (state, metrics)
    eval_fn: object  # jitted evaluate(state, rest, batch) -> the objective's sums (validation)
    stored: "StoredLayout | None" = None  # set when the model runs padded layer buckets
    reference: str = "none"  # DPO's reference model: "adapters_off", "frozen_copy" (state["reference"]) or "none"

    def for_checkpoint(self, params, opt_state):
        """(params, opt_state) in the layout checkpoints hold: unpadded layers (identity unless bucketed)."""
        return (params, opt_state) if self.stored is None else self.stored.unpad(params, opt_state)

    def from_checkpoint(self, params, opt_state):
        """The inverse of `for_checkpoint`: restored trees -> the layout the step runs."""
        return (params, opt_state) if self.stored is None else self.stored.pad(params, opt_state)

    def checkpoint_abstract(self) -> tuple[dict, object]:
        """(params + frozen, opt_state) as sharded ShapeDtypeStructs in the checkpoint layout: restore targets."""
        if self.stored is not None:
            return self.stored.params_abs, self.stored.opt_abs
        return (with_shardings(merge_trees(self.params_abs, self.rest_abs), merge_trees(self.p_shard, self.r_shard)),
                with_shardings(self.opt_abs, self.o_shard))

    @property
    def state_shard(self) -> dict:
        return state_shardings(self.p_shard, self.o_shard, self.reference)

    def abstract_batch(self, batch_size: int, seq_len: int) -> dict:
        sharding = rules.batch_sharding(self.mesh)
        return {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32 if k == "loss_mask" else jnp.int32,
                                        sharding=sharding) for k in BATCH_KEYS}

    def abstract_args(self, batch_size: int, seq_len: int) -> tuple:
        """(state, rest, batch) as sharded ShapeDtypeStructs: what `step_fn.lower` takes."""
        state = {"params": with_shardings(self.params_abs, self.p_shard),
                 "opt_state": with_shardings(self.opt_abs, self.o_shard)}
        if self.reference == "frozen_copy":
            state["reference"] = state["params"]
        return state, with_shardings(self.rest_abs, self.r_shard), self.abstract_batch(batch_size, seq_len)


@dataclasses.dataclass
class StoredLayout:
    """A bucketed model's checkpoint layout (jaxlm.model.buckets): the train state is padded, checkpoints
    are not. Converting costs one copy of the state on the devices, for the moment of a save or restore."""

    params_abs: dict  # sharded ShapeDtypeStructs, unpadded
    opt_abs: object
    unpad: object  # jitted (params, opt_state) BUCKETED -> STORED (jaxlm.model.layouts)
    pad: object  # jitted, the inverse


def stored_layout(run_cfg, mesh: Mesh, p_shard, o_shard) -> StoredLayout:
    cfg = run_cfg.model
    model_abs = model_for(cfg.stored(), run_cfg.quant, run_cfg.lora, abstract=True)
    split, params_abs, rest_abs = split_model(model_abs, run_cfg.lora)
    assert not rest_abs, "layer buckets are only used without quantization or LoRA (jaxlm.variants.layout_config)"
    axes = logical_axes(split.trainable)
    sp_shard = param_shardings(axes, params_abs, mesh)
    tx, _ = make_optimizer(run_cfg.train, axes)
    so_shard = opt_state_shardings(tx, params_abs, sp_shard, mesh)
    unpad = jax.jit(lambda p, o: (stored_tree(cfg, p), stored_tree(cfg, o)), out_shardings=(sp_shard, so_shard))
    pad = jax.jit(lambda p, o: (bucketed_tree(cfg, p), bucketed_tree(cfg, o)), out_shardings=(p_shard, o_shard))
    return StoredLayout(with_shardings(params_abs, sp_shard),
                        with_shardings(jax.eval_shape(tx.init, params_abs), so_shard),
                        unpad, pad)


def build_train_program(run_cfg, mesh: Mesh) -> TrainProgram:
    """Everything the train step needs, from run_cfg's model/quant/lora/train sections, on `mesh`."""
    tc = run_cfg.train
    model_abs = model_for(run_cfg.model, run_cfg.quant, run_cfg.lora, abstract=True)
    split, params_abs, rest_abs = split_model(model_abs, run_cfg.lora)
    axes = logical_axes(split.trainable)
    p_shard = param_shardings(axes, params_abs, mesh)
    r_shard = param_shardings(logical_axes(split.rest), rest_abs, mesh)
    tx, schedule = make_optimizer(tc, axes)
    o_shard = opt_state_shardings(tx, params_abs, p_shard, mesh)
    reference = reference_kind(run_cfg)
    state_shard = state_shardings(p_shard, o_shard, reference)
    step = make_train_step(split, tx, micro_batches=tc.micro_batches,
                           objective=make_objective(run_cfg.posttrain, tc.z_loss, tc.loss_chunk), reference=reference)
    step_fn = jit_train_step(step, mesh, state_shard, r_shard)
    evaluate = make_eval_step(split, make_objective(run_cfg.posttrain, 0.0, tc.loss_chunk), reference)
    eval_fn = jit_eval_step(evaluate, mesh, {k: v for k, v in state_shard.items() if k != "opt_state"}, r_shard)
    stored = stored_layout(run_cfg, mesh, p_shard, o_shard) if model_abs.cfg.bucketed else None  # layout: variants
    return TrainProgram(mesh, split, params_abs, rest_abs, jax.eval_shape(tx.init, params_abs), p_shard, r_shard,
                        o_shard, tx, schedule, step_fn, eval_fn, stored, reference)


def reference_kind(run_cfg) -> str:
    """DPO's reference: the base with the adapters off under LoRA (free), else a frozen copy of the starting
    parameters (one more copy of them; no optimizer state). SimPO and SFT need none."""
    if run_cfg.posttrain.objective != "dpo":
        return "none"
    return "adapters_off" if run_cfg.lora.enabled else "frozen_copy"


def state_shardings(p_shard, o_shard, reference: str) -> dict:
    """The train state's shardings: params and opt_state, and the frozen DPO reference (laid out as params)."""
    return {"params": p_shard, "opt_state": o_shard, **({"reference": p_shard} if reference == "frozen_copy" else {})}


def check_batch(tc, mesh: Mesh, process_count: int, max_context: int) -> None:
    """Each micro-batch must split evenly over the batch axes (and the batch over the processes), and a
    sequence must fit the model's context."""
    if tc.seq_len > max_context:
        raise ConfigError(f"train.seq_len {tc.seq_len} is longer than the model's context (model.max_context "
                          f"{max_context}); lower train.seq_len, or raise model.max_context to train a longer context")
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = tc.batch_size // tc.micro_batches
    if micro % batch_ways or tc.batch_size % process_count:
        raise ConfigError(f"train.batch_size {tc.batch_size} / micro_batches {tc.micro_batches} = {micro} sequences "
                          f"per micro-batch must be divisible by mesh data x fsdp = {batch_ways} (and batch_size by "
                          f"{process_count} processes); change train.batch_size or the mesh")


def with_shardings(abstract, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def initial_params(run_cfg, trainable_shardings, frozen_shardings):
    """(trainable, frozen) pure dicts: the parameters of train.init_from (a model dir or run dir) or a
    fresh random init, created by one jitted function directly in its sharded layout."""
    if run_cfg.train.init_from:
        _, base = load_model(run_cfg.train.init_from, model_config=run_cfg.model)  # base weights only
        model = model_for(run_cfg.model, run_cfg.quant, run_cfg.lora, base=base)
        _, params, rest = split_model(model, run_cfg.lora)
        return place(params, trainable_shardings), place(rest, frozen_shardings)

    def init():  # quant + LoRA from scratch: LoRA on a quantized random base (a study setting)
        model = model_for(run_cfg.model, run_cfg.quant, run_cfg.lora, seed=run_cfg.seed)
        _, params, rest = split_model(model, run_cfg.lora)
        return params, rest

    return jax.jit(init, out_shardings=(trainable_shardings, frozen_shardings))()


def place(tree, shardings):
    """Host arrays -> global arrays with the given shardings (works across processes)."""
    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)
