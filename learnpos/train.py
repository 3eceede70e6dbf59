"""train(cfg): one readable loop from a Config to a run directory."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from learnpos import faults
from learnpos.analysis.position_stats import PositionStats
from learnpos.analysis.tensorboard import TensorBoardLog
from learnpos.config import Config
from learnpos.distributed import Dist, check_split, micro_batches, no_sync, wrap_for_training
from learnpos.errors import ConfigError, DataError, LearnposError, RunDirError, TrainingDiverged
from learnpos.files import lock_dir
from learnpos.hardware import autocast_for, resolve_device, resolve_dtype
from learnpos.load import absolute_data_paths, build_model, check_config_against_weights, data_change
from learnpos.model import GPT
from learnpos.optim import WeightAverage, build_optimizer, lr_at
from learnpos.resume import check_run_dir, load_checkpoint, resume_point, write_run_config
from learnpos.runs import (
    BEST_DIR,
    MODEL_FILE,
    STATE_FILE,
    STATS_FILE,
    append_metrics,
    has_checkpoint,
    read_data_manifest,
    remove_leftovers,
    save_trainer_state,
    save_weights,
    truncate_metrics,
    verify_checkpoint,
    write_checkpoint,
    write_data_manifest,
)
from learnpos.tasks import build_task

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    model: GPT
    step: int
    metrics: dict  # the last evaluation
    wall_s: float


def train(cfg: Config, resume: bool = False, stop_after: int | None = None, quiet: bool = False,
          accept_data_change: bool = False, on_eval=None) -> TrainResult:
    """Train `cfg` into `cfg.train.out_dir`.

    resume: continue from the run directory's last checkpoint (bit-exact on CPU).
    stop_after: stop (with a checkpoint) after this many steps of *this* call, as if the
        process were killed there; the schedule still runs to `train.max_iters`.
    accept_data_change: resume although the data differs from the run's data.json (which is
        then rewritten); otherwise that is a DataError naming the change.
    on_eval: called as on_eval(step, metrics) after each evaluation (rank 0); a true result
        ends the run there, checkpointed, like an early stop (`learnpos tune`'s pruner).

    A run directory has one writer: the lock (`learnpos.files.lock_dir`) is taken before
    anything is checked or written and held to the end; a second writer gets a RunDirError
    naming the holder. A fresh run that fails before its first checkpoint removes only what
    it made. Under torchrun every process calls this; see learnpos/distributed.py for how a
    step is split. Rank 0 alone locks and writes the run directory, prints and evaluates.
    """
    t = cfg.train
    t0 = time.perf_counter()
    device = resolve_device(t.device)
    dist = Dist.from_env(device.type)
    device = dist.device(device)
    if not dist.main:  # rank 0 reports (data warnings, early stops); the others would repeat it
        logging.getLogger("learnpos").setLevel(logging.ERROR)
    try:
        check_split(t.batch_size, dist.world, t.grad_accum)
        t.dtype = resolve_dtype(device, t.dtype)  # saved as chosen: a resumed run keeps its precision
        autocast = autocast_for(device, t.dtype)
        torch.manual_seed(t.seed)
        run_dir = Path(t.out_dir)
        if not dist.main:
            return _train(cfg, run_dir, device, autocast, resume, stop_after, True, t0, dist, accept_data_change,
                          on_eval)
        if resume and not run_dir.is_dir():
            raise RunDirError(f"cannot resume {run_dir}: no such run directory")
        with lock_dir(run_dir) as lock:
            remove_leftovers(run_dir)  # of killed writers: the lock proves none is alive
            check_run_dir(run_dir, resume)
            try:
                return _train(cfg, run_dir, device, autocast, resume, stop_after, quiet, t0, dist, accept_data_change,
                              on_eval)
            except BaseException:
                # A fresh run that fails before its first checkpoint leaves nothing to resume:
                # remove what it wrote (config, tokenizer, metrics), so the same command can
                # simply run again. The directory was empty when checked, under the lock.
                if not resume and not has_checkpoint(run_dir):
                    lock.discard_written()
                raise
    finally:
        dist.close()


def _setup(cfg: Config, run_dir: Path, resume: bool, dist: Dist, accept_data_change: bool):
    """The task (its tokenizer learned once, by rank 0, and read by the other ranks), the
    run's config.json and data.json. The other ranks wait for rank 0 and fail with its error
    if it failed."""
    task, error = None, None
    if dist.main:
        try:
            if not resume:
                absolute_data_paths(cfg)
            task = build_task(cfg, run_dir)
            _resolve_vocab(cfg, task)
            sources = task.data_sources()
            changed = data_change(run_dir, task) if resume else None
            if changed and not accept_data_change:
                raise DataError(f"cannot resume {run_dir}: its data changed since it was trained ({changed}); "
                                f"pass --data PATH if the data moved, or --accept-data-change to go on with the "
                                f"data as it is now")
            if changed:
                log.warning("resuming %s on changed data: %s", run_dir, changed)
            write_run_config(cfg, run_dir, resume)
            if sources and (changed or not resume or read_data_manifest(run_dir) is None):
                write_data_manifest(run_dir, sources)
        except Exception as e:
            error = e
        dist.broadcast(None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        return task
    failed = dist.broadcast(None)
    if failed is not None:
        kind, message = failed
        raise (kind if issubclass(kind, LearnposError) else RuntimeError)(f"rank 0: {message}")
    task = build_task(cfg, run_dir)
    _resolve_vocab(cfg, task)
    return task


def _resolve_vocab(cfg: Config, task) -> None:
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = task.vocab_size
    elif cfg.model.vocab_size < task.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} < the task's {task.vocab_size} tokens; "
                          f"leave it 0 to take it from the task")


def _train(cfg: Config, run_dir: Path, device: torch.device, autocast, resume: bool, stop_after: int | None,
           quiet: bool, t0: float, dist: Dist, accept_data_change: bool = False, on_eval=None) -> TrainResult:
    t = cfg.train
    folder = resume_point(run_dir, t) if resume else None
    if folder is not None:  # before config.json is rewritten with a schedule the run has passed
        reached = verify_checkpoint(folder)["step"]
        if t.max_iters < reached:
            raise ConfigError(f"train.max_iters={t.max_iters} is below step {reached}, which {run_dir} has reached; "
                              f"give --train.max_iters={reached} or more to go on")
    task = _setup(cfg, run_dir, resume, dist, accept_data_change)
    task.files_dir = run_dir  # the trainer is the run's writer: evaluation files go into it
    if folder is not None:  # config.json is untrusted: its sizes must be the weights' before anything is allocated
        check_config_against_weights(cfg, task, folder / MODEL_FILE)
    model = build_model(cfg, task).to(device)
    optimizer = build_optimizer(model, t, device.type)
    average = WeightAverage(model, t.ema) if t.ema else None
    if dist.rank > 0:  # each rank its own dropout stream; rank 0 keeps the single-process one
        torch.manual_seed(t.seed * 1_000_003 + dist.rank)
    step = 0
    if folder is not None:
        step = load_checkpoint(folder, model, optimizer, device, dist, average)
    history = truncate_metrics(run_dir, step) if (resume and dist.main) else []  # drops a line cut mid-append
    skipped = sum(r.get("skipped", 0) for r in history if r.get("split") == "train")
    best, since_best = _best_so_far(history, t)
    spent = next((r["time_s"] for r in reversed(history) if "time_s" in r), 0.0)  # seconds before this call
    budget_s = t.time_budget * 60
    if budget_s and spent >= budget_s:
        raise ConfigError(f"{run_dir} has used its train.time_budget of {t.time_budget:g} minutes; raise "
                          f"--train.time_budget to go on")
    elapsed = lambda: spent + time.perf_counter() - t0  # noqa: E731
    tables = {name: table.weight for name, table in model.learned_tables().items()}
    stats = None
    if t.position_stats and tables and dist.main:
        saved = folder / STATS_FILE if folder is not None else None
        stats = PositionStats.load(saved, tables) if saved is not None and saved.exists() else PositionStats(tables)
    forward = torch.compile(model) if t.compile else model
    step_loss_fn = wrap_for_training(forward, task, dist, device, lambda: task.train_batch(step, t.batch_size))
    log.info("model: %d parameters (%d without learned tables); %s on %s%s",
             model.num_params(), model.num_params(include_tables=False), t.dtype, device,
             f", {dist.world} processes" if dist.active else "")

    board = TensorBoardLog(run_dir, step) if t.tensorboard and dist.main else None
    run = _Run(cfg, run_dir, task, model, optimizer, dist, device, autocast, step_loss_fn, stats, average)
    end = t.max_iters if stop_after is None else min(t.max_iters, step + stop_after)
    metrics: dict = {}
    bar = tqdm(total=t.max_iters, initial=step, disable=quiet, desc="train", unit="it", dynamic_ncols=True)
    model.train()
    while step < end:
        lr = lr_at(step, t)
        norms_now = board is not None and ((step + 1) % t.log_interval == 0 or step + 1 == end)
        loss, was_skipped, norms = run.step(step, lr, norms_now)
        skipped += was_skipped
        step += 1
        bar.update(1)

        out_of_time = bool(budget_s) and elapsed() >= budget_s
        if budget_s and dist.active:
            out_of_time = dist.broadcast(out_of_time)  # rank 0's clock decides for all
        log_now = step % t.log_interval == 0 or step == end or out_of_time
        eval_now = step % t.eval_interval == 0 or step == end or out_of_time
        if not (log_now or eval_now):
            continue
        loss_value = loss.item()  # checked only here (a host sync): NaN is sticky, later losses stay NaN
        if not math.isfinite(loss_value) and t.on_nonfinite == "stop":
            raise TrainingDiverged(f"loss is {loss_value} at step {step}; lower train.lr (now {t.lr}), enable "
                                   f"train.grad_clip or set train.on_nonfinite=skip; the last checkpoint in "
                                   f"{run_dir} is kept")
        if log_now and dist.main:
            record = {"step": step, "split": "train", "loss": loss_value, "lr": lr, "time_s": round(elapsed(), 3)}
            if t.on_nonfinite == "skip":
                record["skipped"] = skipped
            append_metrics(run_dir, record)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if board is not None:
                board.train(step, loss_value, lr, {k: float(v) for k, v in norms.items()})
        if eval_now:
            metrics, best, since_best, stop = run.evaluate(step, elapsed, best, since_best, on_eval)
            if board is not None:
                with run.averaged():  # the tables that were evaluated
                    board.eval(step, metrics, {k: v.weight for k, v in model.learned_tables().items()})
            run.checkpoint(step)
            if not quiet:
                bar.write(_summary(step, metrics))
            if out_of_time and not stop:
                if dist.main:
                    log.warning("train.time_budget of %g minutes spent at step %d of %d; the run ends here",
                                t.time_budget, step, t.max_iters)
                break
            if stop:
                if dist.main and stop != "asked":
                    log.warning("early stop at step %d: %s has not improved on %.6g for %d evaluations",
                                step, t.early_stop_metric, best, since_best)
                break
    bar.close()
    if board is not None:
        board.close()
    if average is not None:  # from here on the model is what was evaluated and saved
        average.apply_for_good()

    if dist.main and (step == t.max_iters or (step < end and step < t.max_iters)):  # ended early: no resume to come
        from learnpos.analysis.plots import save_position_plots

        save_position_plots(model, run_dir)
    return TrainResult(run_dir, model, step, metrics, time.perf_counter() - t0)


@dataclass
class _Run:
    """What one training call steps, evaluates and checkpoints (built once by `_train`)."""

    cfg: Config
    run_dir: Path
    task: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dist: Dist
    device: torch.device
    autocast: object
    loss_fn: object  # the task's loss through the (compiled, DDP-wrapped) model
    stats: PositionStats | None
    average: WeightAverage | None  # train.ema: evaluated, kept as best and saved as the model

    def averaged(self):
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def step(self, step: int, lr: float, norms: bool = False) -> tuple[torch.Tensor, bool, dict]:
        """One optimizer step on the global batch of `step` at learning rate `lr`: (the batch's
        mean loss, on the device, whether the step was skipped as non-finite, and with `norms`
        each learned table's gradient norm before clipping, as device tensors)."""
        t, dist, model, optimizer = self.cfg.train, self.dist, self.model, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_ratio", 1.0)  # Muon's group: train.muon_lr / train.lr
        batch = self.task.train_batch(step, t.batch_size)  # the global batch, the same on every rank
        model.check_ids(batch.position_ids, batch.extra_ids, batch.idx.shape[1])  # on the host, before the step
        batch = replace(batch, ids_checked=True)
        parts = micro_batches(batch, dist, t.grad_accum)
        if len(parts) == 1 and not dist.active:  # the common case: one micro-batch, the loss as it is
            with self.autocast():
                loss = self.loss_fn(parts[0].to(self.device))
            loss.backward()
            loss = loss.detach()
        else:
            total = self.task.loss_terms(batch)
            losses = []
            for i, part in enumerate(parts):
                weight = self.task.loss_terms(part) * dist.world / total  # its share of the batch's loss terms
                with no_sync(self.loss_fn, last=i == len(parts) - 1), self.autocast():
                    part_loss = self.loss_fn(part.to(self.device)) * weight
                part_loss.backward()
                losses.append(part_loss.detach())
            loss = torch.stack(losses).sum()
        if dist.active:
            loss = dist.sum(loss) / dist.world  # the global batch's mean loss
        if t.on_nonfinite == "skip" and not _finite_step(loss, model):
            optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: non-finite loss or gradient; batch skipped", step + 1)
            return loss, True, {}
        grad_norms = {}
        if norms:
            grad_norms = {name: torch.linalg.vector_norm(table.weight.grad) for name, table
                          in model.learned_tables().items() if table.weight.grad is not None}
        if self.stats is not None:
            self.stats.update()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update(step)
        return loss, False, grad_norms

    def evaluate(self, step: int, elapsed, best: float | None, since_best: int, on_eval):
        """Rank 0 evaluates, logs, keeps the best weights and asks `on_eval`; every rank gets
        the decision. Returns (metrics, best, since_best, stop: False, True or "asked")."""
        t, run_dir, model = self.cfg.train, self.run_dir, self.model
        metrics, stop = {}, False
        if self.dist.main:
            with self.averaged():
                metrics = self.task.evaluate(model, self.device, autocast=self.autocast)
            faults.point("eval")  # crash tests: killed with an evaluation done but not logged
            append_metrics(run_dir, {"step": step, "split": "val", **metrics, "time_s": round(elapsed(), 3)})
            if t.early_stop_metric:
                value = _metric(metrics, t.early_stop_metric, self.cfg.task)
                if best is None or (value > best if t.early_stop_mode == "max" else value < best):
                    best, since_best = value, 0  # the best weights go first: see _best_so_far
                    with self.averaged():
                        write_checkpoint(run_dir, step, {MODEL_FILE: lambda p: save_weights(p, model, step)}, BEST_DIR)
                else:
                    since_best += 1
                stop = t.early_stop_patience > 0 and since_best >= t.early_stop_patience
            if on_eval is not None and on_eval(step, metrics):
                stop = "asked"
        return metrics, best, since_best, self.dist.broadcast(stop)  # the other ranks wait here for rank 0

    def checkpoint(self, step: int) -> None:
        rng = self.dist.gather(torch.get_rng_state()) if self.dist.active else None
        if not self.dist.main:
            return
        with self.averaged():  # the model file is what was evaluated; the trained weights go with the state
            trained = self.average.trained if self.average is not None else None
            writers = {MODEL_FILE: lambda p: save_weights(p, self.model, step),
                       STATE_FILE: lambda p: save_trainer_state(p, self.optimizer, step, rng, trained)}
            if self.stats is not None:
                writers[STATS_FILE] = self.stats.save
            write_checkpoint(self.run_dir, step, writers)


def _finite_step(loss: torch.Tensor, model) -> bool:
    """Whether this step's loss and every gradient are finite (one host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]) if grads else loss.new_zeros(1)
    return bool(torch.isfinite(loss).all() and torch.isfinite(norms).all())


def _metric(metrics: dict, name: str, task: str) -> float:
    value = metrics.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        numbers = ", ".join(k for k, v in metrics.items() if isinstance(v, float))
        raise ConfigError(f"train.early_stop_metric='{name}' is not a metric of task '{task}'; it reports: {numbers}")
    return float(value)


def _best_so_far(history: list[dict], t) -> tuple[float | None, int]:
    """The best value of the early-stopping metric in the evaluations logged so far and how
    many evaluations came after it: a resumed run continues the count from its log. (The
    best weights are written before the checkpoint of the same step, so a kill between the
    two leaves best/ at most one evaluation ahead of the log, which the resumed run, being
    bit-exact, rewrites with the same weights when it gets there.)"""
    best, since = None, 0
    if not t.early_stop_metric:
        return best, since
    for record in history:
        value = record.get(t.early_stop_metric) if record.get("split") == "val" else None
        if not isinstance(value, (int, float)):
            continue
        if best is None or (value > best if t.early_stop_mode == "max" else value < best):
            best, since = float(value), 0
        else:
            since += 1
    return best, since


def _summary(step: int, metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    return f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
