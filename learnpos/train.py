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
from learnpos.config import Config, config_diff, is_device_name, load_run_config
from learnpos.distributed import Dist, check_split, micro_batches, no_sync, wrap_for_training
from learnpos.errors import ConfigError, DataError, LearnposError, RunDirError, TrainingDiverged
from learnpos.files import folder_contents, lock_dir
from learnpos.hardware import cpu_has_amx_bf16
from learnpos.load import absolute_data_paths, build_model, check_config_against_weights, data_change, data_keys
from learnpos.model import GPT
from learnpos.optim import build_optimizer, lr_at
from learnpos.runs import (
    BEST_DIR,
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    STATS_FILE,
    append_metrics,
    has_checkpoint,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    read_data_manifest,
    read_metrics,
    remove_leftovers,
    save_trainer_state,
    save_weights,
    truncate_metrics,
    verify_checkpoint,
    write_checkpoint,
    write_config,
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


def resolve_device(name: str, flag: str = "--train.device") -> torch.device:
    """auto | cpu | cuda | cuda:N as a torch.device, or a ConfigError naming `flag` (the
    option the user set it with) when it is not one, or not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_device_name(name):
        raise ConfigError(f"{flag}={name} is not one of: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{flag}={name} but CUDA is not available here; use {flag}=cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"{flag}={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_dtype(device: torch.device, dtype: str) -> str:
    """`auto` = bf16 autocast where it is fast and measured to keep quality: CUDA with bf16
    support, and CPUs with AMX-BF16 (there a training step of the large benchmark config is
    ~1.8x faster and shakespeare-char ends within 0.003 of the fp32 val loss; see
    benchmarks/time_to_quality.py). Elsewhere (e.g. AVX512-BF16 without AMX, not measured) fp32."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_amx_bf16() else "float32"


def autocast_for(device: torch.device, dtype: str):
    """A zero-argument context factory: bf16 autocast, or nothing for float32."""
    if resolve_dtype(device, dtype) == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / CONFIG_FILE).exists():
            raise RunDirError(f"cannot resume: {run_dir} has no {CONFIG_FILE}")
    elif has_checkpoint(run_dir):
        raise RunDirError(f"{run_dir} already holds a trained model; pass --resume to continue it "
                          f"or choose another --train.out_dir")
    elif run_dir.exists() and (held := ", ".join(folder_contents(run_dir)[:5])):
        raise RunDirError(f"{run_dir} is not empty ({held}) but holds no checkpoint: files of an interrupted "
                          f"or another run. Remove it or choose another --train.out_dir (a fresh run never "
                          f"mixes with old files), or --resume it if it is this run")


def _write_config(cfg: Config, run_dir: Path, resume: bool) -> None:
    if resume:
        saved = load_run_config(run_dir / CONFIG_FILE)
        # data paths may change (data that moved): its content is checked against data.json instead
        changed = config_diff(saved, cfg, ignore=("train", *data_keys(cfg)))
        if changed:
            raise RunDirError(f"cannot resume {run_dir}: {', '.join(changed)} differ from its config.json "
                              f"(only train.* settings, and where the data is, may change on resume)")
        if saved.train.optimizer != cfg.train.optimizer:
            raise RunDirError(f"cannot resume {run_dir} with train.optimizer={cfg.train.optimizer}: its optimizer "
                              f"state is {saved.train.optimizer}'s; start a new run to switch optimizers")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg.to_json() + "\n")


def _resume_point(run_dir: Path, t) -> Path | None:
    """The checkpoint to resume from; None for a run that stopped before its first checkpoint
    was complete (killed in its first steps, evaluation or checkpoint write: it starts again
    at step 0, which gives the same run since every batch is a function of the step). A run
    whose log goes past its first checkpoint but has none left is refused."""
    if has_checkpoint(run_dir):
        return latest_checkpoint(run_dir)
    if (run_dir / MODEL_FILE).exists():
        raise RunDirError(f"{run_dir} was made by an older learnpos ({MODEL_FILE} at the top, no checkpoints/); "
                          f"this version cannot resume it: train it again")
    first = min(t.eval_interval, t.max_iters)  # where the first checkpoint is written
    if any(r.get("step", 0) > first for r in read_metrics(run_dir)):
        raise RunDirError(f"cannot resume {run_dir}: its metrics.jsonl records training steps but no checkpoint "
                          f"is left (checkpoints/ was removed?); train it again in a new directory")
    return None


def _load_checkpoint(folder: Path, model, optimizer, device: torch.device, dist: Dist) -> int:
    """Weights, optimizer state and RNG of `folder`; returns its step. The optimizer's
    hyper-parameters (weight decay, betas, momentum: what `load_state_dict` would bring back
    from the checkpoint) are the current config's, so a resumed run trains with what its
    config.json says; only its moments come from the checkpoint."""
    state = load_trainer_state(folder)
    weights_step = load_weights(model, folder)
    if weights_step != state["step"]:
        raise RunDirError(f"{folder}: weights are from step {weights_step} but optimizer state from "
                          f"step {state['step']}; cannot resume exactly")
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, current in zip(optimizer.param_groups, settings, strict=True):
        if group.get("name") != current.get("name"):
            raise RunDirError(f"{folder}: parameter group '{group.get('name')}' where this model has "
                              f"'{current.get('name')}'; cannot resume")
        group.update(current)
    ranks = state.get("rng_ranks")
    if dist.active and (ranks is None or len(ranks) != dist.world):
        log.warning("%s was saved by %s process(es), this run has %d: the dropout streams of ranks > 0 restart, "
                    "so the run continues correctly but not bit-identically", folder,
                    len(ranks) if ranks else 1, dist.world)
        ranks = None
    torch.set_rng_state(ranks[dist.rank] if ranks is not None else state["rng_cpu"])
    if "rng_cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["step"]


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
            _check_run_dir(run_dir, resume)
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
            _write_config(cfg, run_dir, resume)
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
    folder = _resume_point(run_dir, t) if resume else None
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
    if dist.rank > 0:  # each rank its own dropout stream; rank 0 keeps the single-process one
        torch.manual_seed(t.seed * 1_000_003 + dist.rank)
    step = 0
    if folder is not None:
        step = _load_checkpoint(folder, model, optimizer, device, dist)
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
    run = _Run(cfg, run_dir, task, model, optimizer, dist, device, autocast, step_loss_fn, stats)
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

    def step(self, step: int, lr: float, norms: bool = False) -> tuple[torch.Tensor, bool, dict]:
        """One optimizer step on the global batch of `step` at learning rate `lr`: (the batch's
        mean loss, on the device, whether the step was skipped as non-finite, and with `norms`
        each learned table's gradient norm before clipping, as device tensors)."""
        t, dist, model, optimizer = self.cfg.train, self.dist, self.model, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr
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
        return loss, False, grad_norms

    def evaluate(self, step: int, elapsed, best: float | None, since_best: int, on_eval):
        """Rank 0 evaluates, logs, keeps the best weights and asks `on_eval`; every rank gets
        the decision. Returns (metrics, best, since_best, stop: False, True or "asked")."""
        t, run_dir, model = self.cfg.train, self.run_dir, self.model
        metrics, stop = {}, False
        if self.dist.main:
            metrics = self.task.evaluate(model, self.device, autocast=self.autocast)
            faults.point("eval")  # crash tests: killed with an evaluation done but not logged
            append_metrics(run_dir, {"step": step, "split": "val", **metrics, "time_s": round(elapsed(), 3)})
            if t.early_stop_metric:
                value = _metric(metrics, t.early_stop_metric, self.cfg.task)
                if best is None or (value > best if t.early_stop_mode == "max" else value < best):
                    best, since_best = value, 0  # the best weights go first: see _best_so_far
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
        writers = {MODEL_FILE: lambda p: save_weights(p, self.model, step),
                   STATE_FILE: lambda p: save_trainer_state(p, self.optimizer, step, rng)}
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
