"""The training loop: set up mesh, state, data and checkpoints; run steps; log; save; resume.

    result = train(run_cfg)            # reads text through jaxlm.data, writes train.out_dir

Every check that can fail on bad input (mesh vs devices, batch vs mesh, checkpoint vs config, data:
the first batch is read before anything else) runs before anything is written to the run directory
(only its lock, `train.lock`, which goes again with the directory if the run made it: run_lock.py).
One trainer at a time holds a run dir. SIGTERM and Ctrl-C stop every process after the same step,
with a checkpoint (stop.py); every process resumes the step that process 0 finds. A resume whose
newest checkpoint is damaged falls back to the newest step that loads, with a warning (the damaged
step is kept aside as `<step>.corrupt`). Only process 0 writes logs and files; every process takes
part in checkpoint saves (each writes its own shards).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxlm.checkpoint.locate import finished_steps
from jaxlm.checkpoint.run_checkpoints import RunCheckpoints
from jaxlm.config import check_sample_fits
from jaxlm.data import make_batch_iterator
from jaxlm.errors import ConfigError, JaxlmError, disk_full, is_disk_full
from jaxlm.model import flops
from jaxlm.ops import choices
from jaxlm.outputs import refuse_overlap
from jaxlm.parallel import distributed, make_mesh, rules
from jaxlm.tokenizer import check_vocab
from jaxlm.training import compile_cache, run_dir as rd
from jaxlm.training.chat_data import chat_sources
from jaxlm.training.data_state import PeekedBatches, reconcile
from jaxlm.training.memory import check_fits
from jaxlm.training.metrics import MetricsLogger, mfu, peak_flops_per_device
from jaxlm.training.program import build_train_program, check_batch, initial_params
from jaxlm.training.resume import restore_newest
from jaxlm.training.run_lock import describe_holder, locked_run_dir
from jaxlm.training.state import drop_like, merge_trees, take_like
from jaxlm.training.stop import StopRequests
from jaxlm.training.validation import Validation, make_validation, rank_value


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer updates done
    losses: dict[int, float]  # step -> loss, for the steps logged by this process
    val_losses: dict[int, float]  # step -> validation loss (train.eval_every), same on every process
    params: dict  # final trainable params (global jax arrays), in the layout the step ran (padded layer
    # buckets when model.bucketed; jaxlm.model.stored_tree gives the unpadded layers)
    opt_state: object  # final optimizer state
    stopped: str = "finished"  # finished | preempted


def train(run_cfg, *, batch_source=None, eval_source=None, tokenizer=None, quiet: bool = False,
          devices=None) -> TrainResult:
    """Run (or resume) the training job described by `run_cfg`.

    batch_source(process_index, process_count, batch_size) -> iterator with get_state/set_state;
    default: `jaxlm.data.make_batch_iterator` over run_cfg.data with the run's tokenizer.
    eval_source(process_index, process_count, batch_size) -> one pass of validation batches, when
    train.eval_every > 0; default: data.validation (jaxlm.training.validation).
    devices: the devices of the mesh (default: all of them).
    """
    tc, mc = run_cfg.train, run_cfg.mesh
    if run_cfg.quant.enabled and not run_cfg.lora.enabled:
        raise ConfigError(f"quant.bits={run_cfg.quant.bits} / quant.embed_bits={run_cfg.quant.embed_bits}: a quantized "
                          f"base is frozen, so only LoRA adapters can train on it; add --set lora.enabled=true, or "
                          f"train in 16 bits and run `jaxlm quantize` afterwards")
    # Signals first: a SIGTERM or Ctrl-C during restore or compile also ends the run cleanly.
    with StopRequests() as stop:
        mesh = make_mesh(mc.data, mc.fsdp, mc.tensor, devices)
        check_batch(tc, mesh, jax.process_count(), run_cfg.model.max_context)
        check_fits(run_cfg, mesh)  # before compiling: XLA can take many minutes over a step that cannot run
        out = Path(tc.out_dir).absolute()
        if tc.init_from:  # the run dir's files would replace the model's own (config.yaml, tokenizer)
            refuse_overlap(out, [tc.init_from], "train.out_dir")
        with locked_run_dir(out) as lock, compile_cache.active(tc.compile_cache, out) as cache:
            return _train(_Job(run_cfg, mesh, out, stop, lock, cache, quiet),
                          _Sources(batch_source, eval_source, tokenizer))


@dataclasses.dataclass
class _Job:
    """What `train` set up around the loop: the config, the mesh, the locked run dir, the stop signals."""

    run_cfg: object
    mesh: Mesh
    out: Path
    stop: StopRequests
    lock: object  # run_lock.locked_run_dir's lock (lock.stale: a dead holder it took over from)
    cache: object  # compile_cache.active's cache (cache.hits counts loads)
    quiet: bool

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"


@dataclasses.dataclass
class _Sources:
    """The caller's data and tokenizer (see `train`); None: from run_cfg."""

    batches: object
    validation: object
    tokenizer: object


@dataclasses.dataclass
class _Data:
    tokenizer: object
    batches: PeekedBatches
    batch_sharding: object
    validation: Validation | None
    notes: list[str]


@dataclasses.dataclass
class _Compiled:
    step: object = None  # the compiled train step: (state, frozen, batch) -> (state, metrics)
    seconds: float = 0.0
    from_cache: bool = False
    kernels: str = ""  # what each kernel site took, and why when it fell back (jaxlm.ops.choices)


@dataclasses.dataclass
class _Progress:
    """Where the run is. The loop advances it; a checkpoint saves it."""

    state: dict  # params, opt_state[, reference]: what the step updates
    frozen: dict  # variables that do not train
    rng: jax.Array
    step: int  # optimizer updates done
    checkpoints: RunCheckpoints
    last_saved: int | None
    notes: list[str] = dataclasses.field(default_factory=list)  # from the restore, for the log
    losses: dict[int, float] = dataclasses.field(default_factory=dict)
    val_losses: dict[int, float] = dataclasses.field(default_factory=dict)
    pending: list[tuple[int, dict]] = dataclasses.field(default_factory=list)  # device metrics not yet fetched
    logged_compile: bool = False


@dataclasses.dataclass
class _Window:
    """Steps since the last log line, for the step time."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    steps: int = 0


def _train(job: _Job, sources: _Sources) -> TrainResult:
    steps = job.run_cfg.train.steps
    program = build_train_program(job.run_cfg, job.mesh)  # abstract: nothing is allocated before the checks pass
    done = distributed.broadcast_json(finished_steps(job.checkpoint_dir))  # process 0's listing, for every process
    data = _open_data(job, program, sources)  # an empty corpus fails here, before any write
    # From abstract shapes: a step the target cannot build also fails before any write; a finished run has none.
    compiled = _compile(job, program) if (done[-1] if done else 0) < steps else _Compiled()
    run = _resume(job, program, data, done) if done else _start(job, program)
    try:
        if jax.process_index() == 0:
            rd.write_run_files(job.out, job.run_cfg, data.tokenizer)
        if compiled.step is None and run.step < steps:  # resumed from an older step than the newest on disk
            compiled = _compile(job, program)
        logger = _open_logger(job, program, data, compiled, run)
        stopped = _run_steps(job, program, data, compiled, run, logger)
        if stopped == "preempted" and run.last_saved != run.step:
            _save_on_stop(job, program, data, run, logger)
        run.checkpoints.close()
        logger.close()
        data.batches.close()
    except BaseException as e:
        run.checkpoints.abandon()  # no temporaries left behind; the finished steps stay
        if is_disk_full(e):
            raise disk_full(job.out) from None
        raise
    return TrainResult(job.out, run.step, run.losses, run.val_losses, run.state["params"], run.state["opt_state"],
                       stopped)


def _open_data(job: _Job, program, sources: _Sources) -> _Data:
    """The tokenizer (checked against the model), the training batches with the first one read, validation."""
    run_cfg = job.run_cfg
    tokenizer, batch_source, eval_source = sources.tokenizer, sources.batches, sources.validation
    if tokenizer is None and batch_source is None:
        tokenizer = rd.load_run_tokenizer(run_cfg)
    if tokenizer is not None:
        check_vocab(run_cfg.model.vocab_size, tokenizer)  # a mismatch fails now, not mid-run
    check_sample_fits(run_cfg, tokenizer)  # the sample after training (with a tokenizer, its prompt's tokens too)
    notes = []
    if run_cfg.posttrain.enabled:  # chat records through the chat template (jaxlm.posttrain)
        tokenizer, batch_source, eval_source, notes = chat_sources(run_cfg, tokenizer, batch_source, eval_source)
    process, processes = jax.process_index(), jax.process_count()
    local_batch = run_cfg.train.batch_size // processes
    if batch_source is None:
        batches = make_batch_iterator(run_cfg.data, tokenizer, seq_len=run_cfg.train.seq_len, batch_size=local_batch,
                                      seed=run_cfg.seed, process_index=process, process_count=processes)
    else:
        batches = batch_source(process, processes, local_batch)
    batches = PeekedBatches(batches)  # unreadable data fails here, before any write
    if batches.skipped_files:
        notes.append(f"data: skipped {batches.skipped_files} file(s) in data.sources that are not regular files "
                     f"(FIFOs, sockets, devices)")
    sharding = rules.batch_sharding(job.mesh)
    validation = make_validation(run_cfg, program, sharding, tokenizer, eval_source, local_batch)
    return _Data(tokenizer, batches, sharding, validation, notes)


def _compile(job: _Job, program) -> _Compiled:
    t0, hits = time.perf_counter(), job.cache.hits
    with choices.recording() as sites:
        lowered = program.step_fn.lower(*program.abstract_args(job.run_cfg.train.batch_size, job.run_cfg.train.seq_len))
    return _Compiled(lowered.compile(), time.perf_counter() - t0, job.cache.hits > hits, choices.summary(sites))


def _open_checkpoints(job: _Job) -> RunCheckpoints:
    """Creates the folder, so only after every check has passed."""
    c = job.run_cfg.checkpoint
    return RunCheckpoints(job.checkpoint_dir, c.every, c.keep, c.keep_best, c.async_save)


def _start(job: _Job, program) -> _Progress:
    """A new run: initial parameters, a fresh optimizer state, the seed's rng."""
    params, frozen = initial_params(job.run_cfg, program.p_shard, program.r_shard)
    state = {"params": params, "opt_state": jax.jit(program.tx.init, out_shardings=program.o_shard)(params)}
    if program.reference == "frozen_copy":  # DPO's reference: the starting parameters
        state["reference"] = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=program.p_shard)(params)
    rng = jax.random.key_data(jax.random.key(job.run_cfg.seed)).astype(jnp.uint32)
    return _Progress(state, frozen, rng, 0, _open_checkpoints(job), last_saved=None)


def _resume(job: _Job, program, data: _Data, done: list[int]) -> _Progress:
    """The newest checkpoint that loads, in the layout the step runs; the data continues where it stopped."""
    notes: list[str] = []
    checkpoints, (full, opt_state, meta) = restore_newest(
        lambda: _open_checkpoints(job), job.checkpoint_dir, done, *program.checkpoint_abstract(), notes)
    full, opt_state = program.from_checkpoint(full, opt_state)
    state = {"params": take_like(full, program.params_abs), "opt_state": opt_state}
    if program.reference == "frozen_copy":
        state["reference"] = initial_params(job.run_cfg, program.p_shard, program.r_shard)[0]
    notes += reconcile(data.batches, meta["data_state"], jax.process_index(), jax.process_count())
    step = int(meta["step"])
    return _Progress(state, drop_like(full, program.params_abs), jnp.asarray(meta["rng"], jnp.uint32), step,
                     checkpoints, last_saved=step, notes=notes)


def _open_logger(job: _Job, program, data: _Data, compiled: _Compiled, run: _Progress) -> MetricsLogger:
    """The logger, and the run's first line: size, mesh, compile time, resume point, then the notes."""
    tc = job.run_cfg.train
    logger = MetricsLogger(job.out, tc.steps, run.step, enabled=(jax.process_index() == 0 and not job.quiet))
    from_cache = f" (from the compile cache {job.cache.directory})" if compiled.from_cache else ""
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(program.params_abs))
    logger.message(f"{job.run_cfg.model.name}: {params:,} trainable params, mesh {dict(job.mesh.shape)}, "
                   f"{jax.device_count()} devices, {jax.process_count()} process(es), "
                   + (f"step compiled in {compiled.seconds:.1f}s{from_cache}" if run.step < tc.steps else
                      f"already finished at step {run.step} of train.steps={tc.steps} (raise train.steps to go on)")
                   + (f", resumed at step {run.step}" if 0 < run.step < tc.steps else ""))
    stale = [f"took over {job.lock.path} from {describe_holder(job.lock.stale)}, which is no longer running"
             ] if job.lock is not None and job.lock.stale else []
    kernels = [f"kernels in the train step: {compiled.kernels}"] if compiled.kernels else []
    for note in kernels + data.notes + stale + run.notes:
        logger.message(note)
    return logger


def _run_steps(job: _Job, program, data: _Data, compiled: _Compiled, run: _Progress, logger) -> str:
    """Train until train.steps, logging, validating and saving on schedule. Returns finished | preempted."""
    tc = job.run_cfg.train
    window = _Window()
    while run.step < tc.steps:
        if job.stop.should_stop() or (tc.stop_after is not None and run.step >= tc.stop_after):
            return "preempted"
        run.state, metrics = compiled.step(run.state, run.frozen, data.batches.next_global(data.batch_sharding))
        run.step += 1
        window.steps += 1
        run.pending.append((run.step, metrics))
        logger.advance()
        save_now = run.checkpoints.should_save(run.step, tc.steps)
        eval_now = data.validation is not None and (run.step % tc.eval_every == 0 or save_now or run.step == tc.steps)
        if run.step % tc.log_every == 0 or save_now or eval_now or run.step == tc.steps:
            val = _log_window(job, program, data, compiled, run, logger, window, eval_now)
            if save_now:
                _save(program, run, data.batches.state(), run.losses[run.step], val.get("val_loss"),
                      rank_value(val) if val else None)
            window = _Window()
    return "finished"


def _log_window(job: _Job, program, data: _Data, compiled: _Compiled, run: _Progress, logger, window: _Window,
                eval_now: bool) -> dict:
    """Fetch the window's metrics (waits for its last step), validate if due, and log one record."""
    tc = job.run_cfg.train
    last = _check_finite(run, logger)[-1]
    step_time = (time.perf_counter() - window.start) / window.steps
    tokens_per_s = tc.batch_size * tc.seq_len / step_time
    val = data.validation.run({k: v for k, v in run.state.items() if k != "opt_state"}, run.frozen) if eval_now \
        else {}
    if val:
        run.val_losses[run.step] = val["val_loss"]
    flops_per_token = flops.train_flops_per_token(job.run_cfg.model, tc.seq_len)
    logger.log({"step": run.step, "loss": float(last["loss"]), "ce": float(last["ce"]), "z": float(last["z"]),
                "grad_norm": float(last["grad_norm"]), **_objective_metrics(last),
                "lr": float(program.schedule(run.step - 1)), "tokens_per_s": tokens_per_s, "step_time_s": step_time,
                "mfu": mfu(flops_per_token, tokens_per_s, jax.device_count(), tc.peak_flops or peak_flops_per_device()),
                **val, **({} if run.logged_compile else {"compile_s": compiled.seconds})})
    run.logged_compile = True
    run.pending.clear()
    return val


def _save_on_stop(job: _Job, program, data: _Data, run: _Progress, logger) -> None:
    """A stop (signal or train.stop_after) between checkpoints: save the step reached, then say how to go on."""
    _check_finite(run, logger)
    _save(program, run, data.batches.state(), run.losses.get(run.step, float("inf")),
          float("inf") if data.validation is not None else None)  # not validated: ranked last
    logger.message(f"stopped at step {run.step} ({job.stop.reason or 'train.stop_after'}); checkpoint saved; rerun "
                   f"the same command to resume")


def _objective_metrics(metrics: dict) -> dict:
    """The step's metrics beyond pretraining's (sft: mean_token_accuracy; dpo / simpo: rewards/..., logps/...)."""
    return {k: float(v) for k, v in metrics.items() if k not in ("loss", "ce", "z", "grad_norm", "tokens", "finite")}


def _check_finite(run: _Progress, logger) -> list[dict]:
    """Fetch the pending steps' metrics; stop with a clear error at the first non-finite one."""
    fetched = jax.device_get([m for _, m in run.pending])
    for (s, _), m in zip(run.pending, fetched):
        if not m["finite"]:
            run.checkpoints.close()
            logger.close()
            raise JaxlmError(f"loss or gradients became non-finite at step {s} (loss {m['loss']}, grad norm "
                             f"{m['grad_norm']}); the last good checkpoint is step {run.last_saved} in "
                             f"{run.checkpoints.directory}; lower train.lr or raise train.warmup_steps")
        run.losses[s] = float(m["loss"])
    return fetched


def _save(program, run: _Progress, data_state, loss, val_loss=None, rank=None) -> None:
    """The params item holds every nnx.Param (trainable + frozen), the same tree as a model dir's params/,
    in the stored (unpadded) layout. keep_best ranks by `rank` (validation.rank_value: the validation loss,
    or 1 - reward accuracy for preference objectives) when the run validates, else by loss."""
    meta = {"step": run.step, "rng": [int(x) for x in np.asarray(run.rng)], "loss": loss,
            "data_state": distributed.allgather_json(data_state)}
    if val_loss is not None:
        meta["val_loss"] = val_loss
    if rank is None:
        rank = loss if val_loss is None else val_loss
    run.checkpoints.save(run.step, *program.for_checkpoint(merge_trees(run.state["params"], run.frozen),
                                                           run.state["opt_state"]), meta, rank)
    run.last_saved = run.step
