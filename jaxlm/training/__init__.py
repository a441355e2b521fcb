"""Training: config sections, optimizer, loss, the sharded train step, checkpoints, metrics, the loop."""

from jaxlm.config.train import CheckpointConfig, MeshConfig, TrainConfig

__all__ = ["CheckpointConfig", "MeshConfig", "TrainConfig", "train"]


def train(run_cfg, **kwargs):
    """See `jaxlm.training.trainer.train` (imported lazily: it pulls in Orbax and the model)."""
    # lazy: the trainer pulls in Orbax and the model; `jaxlm.training`'s config sections must not
    from jaxlm.training.trainer import train as _train

    return _train(run_cfg, **kwargs)
