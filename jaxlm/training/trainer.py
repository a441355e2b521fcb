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

from jaxlm.checkpoint import load_model
from jaxlm.checkpoint.locate import finished_steps
from jaxlm.checkpoint.metadata import CorruptCheckpoint
from jaxlm.checkpoint.run_checkpoints import RunCheckpoints
from jaxlm.config import check_sample_fits
from jaxlm.data import make_batch_iterator
from jaxlm.errors import ConfigError, JaxlmError, disk_full, is_disk_full
from jaxlm.model import flops
from jaxlm.outputs import refuse_overlap
from jaxlm.parallel import distributed, make_mesh, rules
from jaxlm.tokenizer import check_vocab
from jaxlm.training import compile_cache, run_dir as rd
from jaxlm.training.chat_data import chat_sources
from jaxlm.training.memory import check_fits
from jaxlm.training.metrics import MetricsLogger, mfu, peak_flops_per_device
from jaxlm.training.program import build_train_program, check_batch
from jaxlm.training.run_lock import describe_holder, locked_run_dir
from jaxlm.training.state import drop_like, merge_trees, split_model, take_like
from jaxlm.training.step import BATCH_KEYS
from jaxlm.training.stop import StopRequests
from jaxlm.training.validation import make_validation, rank_value
from jaxlm.variants import model_for


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
        check_sample_fits(run_cfg)
        check_fits(run_cfg, mesh)  # before compiling: XLA can take many minutes over a step that cannot run
        out = Path(tc.out_dir).absolute()
        if tc.init_from:  # the run dir's files would replace the model's own (config.yaml, tokenizer)
            refuse_overlap(out, [tc.init_from], "train.out_dir")
        with locked_run_dir(out) as lock, compile_cache.active(tc.compile_cache, out) as cache:
            return _train(run_cfg, mesh, out, stop, lock, cache, batch_source, eval_source, tokenizer, quiet)


def _train(run_cfg, mesh, out: Path, stop: StopRequests, lock, cache, batch_source, eval_source, tokenizer,
           quiet) -> TrainResult:
    tc = run_cfg.train
    pi, pc = jax.process_index(), jax.process_count()
    # Process 0's listing, so every process resumes the same step (a shared filesystem's listings can differ).
    done = distributed.broadcast_json(finished_steps(out / "checkpoints"))
    resume_step = done[-1] if done else None

    # Model, shardings and the jitted step (abstract first: nothing is allocated before the checks pass).
    program = build_train_program(run_cfg, mesh)
    params_abs = program.params_abs
    p_shard, r_shard, o_shard, tx = program.p_shard, program.r_shard, program.o_shard, program.tx

    # Data (an empty corpus fails here, before any write).
    if tokenizer is None and batch_source is None:
        tokenizer = rd.load_run_tokenizer(run_cfg)
    if tokenizer is not None:
        check_vocab(run_cfg.model.vocab_size, tokenizer)  # a mismatch fails now, not mid-run
        check_sample_fits(run_cfg, tokenizer)  # the sample after training: its prompt's tokens too
    chat_notes = []
    if run_cfg.posttrain.enabled:  # chat records through the chat template (jaxlm.posttrain)
        tokenizer, batch_source, eval_source, chat_notes = chat_sources(run_cfg, tokenizer, batch_source, eval_source)
    local_batch = tc.batch_size // pc
    if batch_source is None:
        batches = make_batch_iterator(run_cfg.data, tokenizer, seq_len=tc.seq_len, batch_size=local_batch,
                                      seed=run_cfg.seed, process_index=pi, process_count=pc)
    else:
        batches = batch_source(pi, pc, local_batch)
    start_state = batches.get_state()
    first = _first_batch(batches)  # unreadable data fails here, before any write
    batch_shard = rules.batch_sharding(mesh)
    validation = make_validation(run_cfg, program, batch_shard, tokenizer, eval_source, local_batch)

    def compile_step():  # from abstract shapes; a step the target cannot build also fails before any write
        """-> (executable, seconds, whether it came from the compile cache)"""
        t0, hits = time.perf_counter(), cache.hits
        lowered = program.step_fn.lower(*program.abstract_args(tc.batch_size, tc.seq_len))
        return lowered.compile(), time.perf_counter() - t0, cache.hits > hits

    # A finished run that is rerun has nothing to compile.
    compiled, compile_s, cached = compile_step() if (resume_step or 0) < tc.steps else (None, 0.0, False)

    def open_checkpoints():  # creates the folder, so only after every check has passed
        return RunCheckpoints(out / "checkpoints", run_cfg.checkpoint.every, run_cfg.checkpoint.keep,
                              run_cfg.checkpoint.keep_best, run_cfg.checkpoint.async_save)

    notes: list[str] = list(chat_notes)
    if lock is not None and lock.stale:
        notes.append(f"took over {lock.path} from {describe_holder(lock.stale)}, which is no longer running")
    skipped = getattr(batches, "stats", dict)().get("not_regular_file", 0)  # FIFOs would block the reader
    if skipped:
        notes.append(f"data: skipped {skipped} file(s) in data.sources that are not regular files (FIFOs, sockets, "
                     f"devices)")
    if resume_step is not None:
        ckpt, (full, opt_state, meta) = _restore_newest(open_checkpoints, out / "checkpoints", done,
                                                        *program.checkpoint_abstract(), notes)
        full, opt_state = program.from_checkpoint(full, opt_state)
        first = None  # the restored data state continues after the batch read for the check
        params, rest = take_like(full, params_abs), drop_like(full, params_abs)
        reference = _initial_params(run_cfg, p_shard, r_shard)[0] if program.reference == "frozen_copy" else None
        if len(meta["data_state"]) == pc:
            batches.set_state(meta["data_state"][pi])
        elif getattr(batches, "global_state", False):  # prepared rows: one stream for any number of processes
            batches.set_state(meta["data_state"][0])
        else:  # the job's process count changed: the data order cannot continue exactly
            batches.set_state(start_state)
            notes.append(f"checkpoint written by {len(meta['data_state'])} processes, now {pc}: data restarts "
                         f"from the beginning of the corpus")
        rng = jnp.asarray(meta["rng"], jnp.uint32)
        step = int(meta["step"])
    else:
        params, rest = _initial_params(run_cfg, p_shard, r_shard)
        opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
        reference = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=p_shard)(params) \
            if program.reference == "frozen_copy" else None  # DPO's reference: the starting parameters
        rng = jax.random.key_data(jax.random.key(run_cfg.seed)).astype(jnp.uint32)
        step = 0
        ckpt = open_checkpoints()
    try:
        if pi == 0:
            rd.write_run_files(out, run_cfg, tokenizer)

        state = {"params": params, "opt_state": opt_state, **({"reference": reference} if reference is not None else {})}
        if compiled is None and step < tc.steps:  # resumed from an older step than the newest on disk
            compiled, compile_s, cached = compile_step()

        flops_per_token = flops.train_flops_per_token(run_cfg.model, tc.seq_len)
        peak = tc.peak_flops or peak_flops_per_device()
        logger = MetricsLogger(out, tc.steps, step, enabled=(pi == 0 and not quiet))
        from_cache = f" (from the compile cache {cache.directory})" if cached else ""
        logger.message(f"{run_cfg.model.name}: {sum(math.prod(x.shape) for x in jax.tree.leaves(params_abs)):,} trainable "
                       f"params, mesh {dict(mesh.shape)}, {jax.device_count()} devices, {pc} process(es), "
                       + (f"step compiled in {compile_s:.1f}s{from_cache}" if step < tc.steps else
                        f"already finished at step {step} of train.steps={tc.steps} (raise train.steps to go on)")
                       + (f", resumed at step {step}" if 0 < step < tc.steps else ""))
        for note in notes:
            logger.message(note)
        losses: dict[int, float] = {}
        val_losses: dict[int, float] = {}
        pending: list[tuple[int, dict]] = []  # device metrics not yet checked on the host
        window_start, window_steps, stopped, first_log = time.perf_counter(), 0, "finished", True
        last_saved = step if resume_step is not None else None
        data_state = start_state if first is not None else batches.get_state()
        while step < tc.steps:
            if stop.should_stop() or (tc.stop_after is not None and step >= tc.stop_after):
                stopped = "preempted"
                break
            local, first = (first, None) if first is not None else (_first_batch(batches), None)
            data_state = batches.get_state()
            batch = {k: jax.make_array_from_process_local_data(batch_shard, np.asarray(local[k])) for k in BATCH_KEYS}
            state, metrics = compiled(state, rest, batch)
            step += 1
            window_steps += 1
            pending.append((step, metrics))
            logger.advance()
            save_now = ckpt.should_save(step, tc.steps)
            eval_now = validation is not None and (step % tc.eval_every == 0 or save_now or step == tc.steps)
            if step % tc.log_every == 0 or save_now or step == tc.steps or eval_now:
                fetched = _check_finite(pending, losses, ckpt, logger, last_saved)  # waits for the last step
                step_time = (time.perf_counter() - window_start) / window_steps
                last = fetched[-1]
                tokens_per_s = tc.batch_size * tc.seq_len / step_time
                val = validation.run({k: v for k, v in state.items() if k != "opt_state"}, rest) if eval_now else {}
                if val:
                    val_losses[step] = val["val_loss"]
                logger.log({"step": step, "loss": float(last["loss"]), "ce": float(last["ce"]), "z": float(last["z"]),
                            "grad_norm": float(last["grad_norm"]), **_objective_metrics(last),
                            "lr": float(program.schedule(step - 1)),
                            "tokens_per_s": tokens_per_s, "step_time_s": step_time,
                            "mfu": mfu(flops_per_token, tokens_per_s, jax.device_count(), peak),
                            **val, **({"compile_s": compile_s} if first_log else {})})
                first_log = False
                pending.clear()
                if save_now:
                    _save(ckpt, program, step, state, rest, data_state, rng, losses[step], val.get("val_loss"),
                          rank_value(val) if val else None)
                    last_saved = step
                window_start, window_steps = time.perf_counter(), 0
        if stopped == "preempted" and last_saved != step:
            _check_finite(pending, losses, ckpt, logger, last_saved)
            _save(ckpt, program, step, state, rest, data_state, rng, losses.get(step, float("inf")),
                  float("inf") if validation is not None else None)  # not validated: ranked last
            logger.message(f"stopped at step {step} ({stop.reason or 'train.stop_after'}); checkpoint saved; rerun "
                           f"the same command to resume")
        ckpt.close()
        logger.close()
        if hasattr(batches, "close"):
            batches.close()
    except BaseException as e:
        ckpt.abandon()  # no temporaries left behind; the finished steps stay
        if is_disk_full(e):
            raise disk_full(out) from None
        raise
    return TrainResult(out, step, losses, val_losses, state["params"], state["opt_state"], stopped)


def _objective_metrics(metrics: dict) -> dict:
    """The step's metrics beyond pretraining's (sft: mean_token_accuracy; dpo / simpo: rewards/..., logps/...)."""
    return {k: float(v) for k, v in metrics.items() if k not in ("loss", "ce", "z", "grad_norm", "tokens", "finite")}


def _first_batch(batches):
    try:
        return next(batches)
    except StopIteration:
        raise JaxlmError("the data iterator ran out of batches; add text to the corpus or lower train.steps") from None


def _restore_newest(open_checkpoints, directory: Path, steps: list[int], full_abs, opt_abs, notes: list[str]):
    """(manager, restored state) of the newest step that loads. Damaged newer steps are then renamed to
    `<step>.corrupt` (kept for inspection, ignored by Orbax), each with a warning; when no step loads,
    nothing is renamed and the error names the newest."""
    ckpt = open_checkpoints()
    failed: list[tuple[int, CorruptCheckpoint]] = []
    for step in reversed(steps):
        try:
            state = ckpt.restore(step, full_abs, opt_abs)
        except CorruptCheckpoint as e:
            if jax.process_count() > 1:  # every process would have to agree on the fallback
                ckpt.close()
                raise
            failed.append((step, e))
            continue
        for bad, e in failed:
            aside = directory / f"{bad}.corrupt"
            if jax.process_index() == 0:
                (directory / str(bad)).rename(aside)
            notes.append(f"warning: {e}; resumed from step {step} instead (the damaged step is kept as {aside})")
        if failed:
            ckpt.manager.reload()
        return ckpt, state
    ckpt.close()
    raise JaxlmError(f"no checkpoint in {directory} loads ({len(failed)} tried; newest: {failed[0][1]}); restore "
                     f"them, or move {directory} away to start the run over")


def _check_finite(pending, losses, ckpt, logger, last_saved) -> list[dict]:
    """Fetch the pending steps' metrics; stop with a clear error at the first non-finite one."""
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
        if not m["finite"]:
            ckpt.close()
            logger.close()
            raise JaxlmError(f"loss or gradients became non-finite at step {s} (loss {m['loss']}, grad norm "
                             f"{m['grad_norm']}); the last good checkpoint is step {last_saved} in {ckpt.directory}; "
                             f"lower train.lr or raise train.warmup_steps")
        losses[s] = float(m["loss"])
    return fetched


def _save(ckpt: RunCheckpoints, program, step, state, rest, data_state, rng, loss, val_loss=None, rank=None) -> None:
    """The params item holds every nnx.Param (trainable + frozen), the same tree as a model dir's params/,
    in the stored (unpadded) layout. keep_best ranks by `rank` (validation.rank_value: the validation loss,
    or 1 - reward accuracy for preference objectives) when the run validates, else by loss."""
    meta = {"step": step, "rng": [int(x) for x in np.asarray(rng)], "loss": loss,
            "data_state": distributed.allgather_json(data_state)}
    if val_loss is not None:
        meta["val_loss"] = val_loss
    if rank is None:
        rank = loss if val_loss is None else val_loss
    ckpt.save(step, *program.for_checkpoint(merge_trees(state["params"], rest), state["opt_state"]), meta, rank)


def _initial_params(run_cfg, p_shard, r_shard):
    """(trainable, frozen) pure dicts: the parameters of train.init_from (a model dir or run dir) or a
    fresh random init, created by one jitted function directly in its sharded layout."""
    if run_cfg.train.init_from:
        _, base = load_model(run_cfg.train.init_from, model_config=run_cfg.model)  # base weights only
        model = model_for(run_cfg.model, run_cfg.quant, run_cfg.lora, base=base)
        _, params, rest = split_model(model, run_cfg.lora)
        return _place(params, p_shard), _place(rest, r_shard)

    def init():  # quant + LoRA from scratch: LoRA on a quantized random base (a study setting)
        model = model_for(run_cfg.model, run_cfg.quant, run_cfg.lora, seed=run_cfg.seed)
        _, params, rest = split_model(model, run_cfg.lora)
        return params, rest

    return jax.jit(init, out_shardings=(p_shard, r_shard))()


def _place(tree, shardings):
    """Host arrays -> global arrays with the given shardings (works across processes)."""
    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)
