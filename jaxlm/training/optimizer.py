"""Optax optimizer of a run: global-norm clipping, then AdamW with a warm-up + cosine schedule.

Weight decay skips norm weights: a parameter decays only when it has at least two dimensions
besides the stacked "layers" axis (the model has no biases; norms are 1-D per layer).
"""

from __future__ import annotations

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P


def lr_schedule(lr: float, steps: int, warmup_steps: int, warmup_init_lr: float, min_lr_ratio: float):
    """Linear warm-up from warmup_init_lr to lr over warmup_steps, then cosine to min_lr_ratio * lr at `steps`."""
    warmup = min(warmup_steps, max(steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(init_value=warmup_init_lr, peak_value=lr, warmup_steps=warmup,
                                              decay_steps=max(steps, warmup + 1), end_value=lr * min_lr_ratio)


def decay_mask(axes_tree) -> dict:
    """True for parameters that take weight decay (matrices), False for norm weights."""
    return jax.tree.map(lambda axes: sum(a != "layers" for a in axes) >= 2, axes_tree,
                        is_leaf=lambda a: isinstance(a, tuple))


def make_optimizer(train_cfg, axes_tree) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) from the `train` config section."""
    schedule = lr_schedule(train_cfg.lr, train_cfg.steps, train_cfg.warmup_steps, train_cfg.warmup_init_lr,
                           train_cfg.min_lr_ratio)
    adamw = optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                        weight_decay=train_cfg.weight_decay, mask=decay_mask(axes_tree))
    parts = ([optax.clip_by_global_norm(train_cfg.clip_norm)] if train_cfg.clip_norm > 0 else []) + [adamw]
    return optax.chain(*parts), schedule


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params, param_shardings, mesh):
    """Optimizer-state shardings: moments follow their parameter (so FSDP shards them), scalars replicate."""
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(tx, lambda _, s: s, abstract_state, param_shardings,
                                 transform_non_params=lambda _: replicated)
