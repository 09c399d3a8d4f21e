"""The training loop: one run of one (dataset, model, optimizer, schedule, batch size, seed).

Per epoch: train over shuffled, augmented full batches with the LR schedule stepped per
optimizer step, then evaluate on the whole test set and on the held-out training images, if
any (`dataset.holdout_images`). `batch_size` is global: it is split over the processes and,
within each, into micro-batches whose gradients accumulate, so the optimizer
always sees the mean gradient of the whole batch. Loss, accuracy and a non-finite flag add up
on the device and are read every `log_every` steps, once early in each epoch and at its end
(`sngm_bench.progress`), so the step itself never waits for the host.

A run writes metrics.csv after every epoch, a checkpoint after every epoch and when it is
stopped (`sngm_bench.stop`: a signal or its deadline; then after the current step), and
summary.json at the start, after every epoch and at the end: `interrupted` with the cause and
the step where it will continue, `failed` with the error (one line when it runs out of GPU
memory or disk, or another process of the run is gone).
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import ExitStack, closing, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from sngm_bench import checkpoint, distributed, records
from sngm_bench.config import Device, Precision, optimizer_settings
from sngm_bench.data import build_data
from sngm_bench.device import autocast_context
from sngm_bench.errors import Interrupted, LostPeer, UserError
from sngm_bench.loggers import NullLogger, open_logger
from sngm_bench.models import build_model
from sngm_bench.noise_scale import NoiseScale
from sngm_bench.optim import build_optimizer
from sngm_bench.progress import Progress, is_readout
from sngm_bench.run_folder import (FolderLock, Plan, check_same_data, clear_run, keep_hydra_files, plan_run,
                                   remove_partial_writes)
from sngm_bench.schedule import build_scheduler, peak_lr
from sngm_bench.stop import StopRequest, deadline

log = logging.getLogger(__name__)


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (a positive integer)."""
    return max(d for d in range(1, min(limit, n) + 1) if n % d == 0)


def micro_batch_size(cfg: DictConfig, local_batch: int, world_size: int) -> int:
    """Images per forward pass in each process: `micro_batch_size`, or else the largest divisor
    of the process's share of the batch that is at most `max_micro_batch_size`."""
    if cfg.micro_batch_size is None:
        return largest_divisor(local_batch, cfg.max_micro_batch_size or local_batch)
    if local_batch % cfg.micro_batch_size:
        raise UserError(
            f"batch_size={cfg.batch_size} is not divisible by {world_size} process(es) x "
            f"micro_batch_size={cfg.micro_batch_size}; choose a micro_batch_size that divides {local_batch}"
        )
    return cfg.micro_batch_size


def small_micro_batch_warning(cfg: DictConfig, local_batch: int, micro_batch: int, world_size: int) -> str | None:
    """A warning when `max_micro_batch_size` left micro-batches under half of it: the process's share
    of the batch has no divisor near it (a prime share gives micro-batches of 1), so a step takes
    many more forward passes and BatchNorm normalizes over far fewer images than asked for. It
    names the nearest batch size whose share has a divisor in [max/2, max]."""
    limit = cfg.max_micro_batch_size
    if cfg.micro_batch_size is not None or limit is None or local_batch <= limit or 2 * micro_batch >= limit:
        return None
    divisors = range((limit + 1) // 2, limit + 1)
    nearest = min((max(1, round(local_batch / d)) * d for d in divisors), key=lambda n: (abs(n - local_batch), n))
    return (f"micro-batches of {micro_batch} images: each process's {local_batch} images of batch_size="
            f"{cfg.batch_size} have no divisor from {(limit + 1) // 2} to max_micro_batch_size={limit}, so a step "
            f"runs {local_batch // micro_batch} forward passes and BatchNorm normalizes over {micro_batch} images; "
            f"batch_size={nearest * world_size} would split into micro-batches of at least {(limit + 1) // 2}")


def carried_totals(saved: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's part of an interrupted epoch's sums (loss, correct, non-finite), saved one row
    per process: its own row when as many processes continue the epoch. Otherwise each process takes
    an equal share of them all, the loss sum first scaled to the new number of processes (it adds
    one mean per process and step; the counts do not scale): so their sum is right at the epoch's
    end, and rank 0's running means, on the progress bar and in the logger, are right meanwhile. An
    older checkpoint's single sum goes to rank 0 as it is."""
    if saved.dim() == 2 and len(saved) == world_size:
        return saved[rank]
    if saved.dim() == 1:
        return saved if rank == 0 else torch.zeros_like(saved)
    sums = saved.sum(0)
    sums[0] *= world_size / len(saved)
    return sums / world_size


def train_step(forward, optimizer, x, y, micro_batch_size: int, autocast, no_sync=nullcontext, probe=None):
    """One optimizer step on this process's batch (x, y), in micro-batches.

    Each micro-batch's mean loss is weighted by its share of the batch, so the accumulated
    gradient is the batch mean; under DDP, gradients are averaged over processes on the last
    micro-batch only (`no_sync` for the others). A `probe` (`noise_scale.NoiseScale`, on steps
    that measure the gradient noise scale) sees the gradient after the first micro-batch and
    after the last. Returns the batch's mean loss and its number of correct predictions, as
    device tensors.
    """
    optimizer.zero_grad(set_to_none=True)
    if probe is not None:
        micro_batch_size = probe.micro_batch_size(len(y), micro_batch_size)
    chunks = list(zip(x.split(micro_batch_size), y.split(micro_batch_size)))
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i, (xm, ym) in enumerate(chunks):
        share = len(ym) / len(y)
        with no_sync() if i < len(chunks) - 1 else nullcontext():
            with autocast:
                logits = forward(xm)
                loss = F.cross_entropy(logits, ym)
            (loss if share == 1 else loss * share).backward()
        if probe is not None and i == 0:
            probe.small(len(ym), share)
        loss_sum += loss.detach().float() * share
        correct += (logits.detach().argmax(1) == ym).sum()
    if probe is not None:
        probe.big()
    optimizer.step()
    return loss_sum, correct


def evaluate(forward, images, batch_size: int, autocast, procs, progress: Progress) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over `images`, each process taking a contiguous shard."""
    totals = torch.zeros(2, dtype=torch.float64, device=procs.device)  # loss sum, correct
    batches = progress.evaluating(images.eval_batches(batch_size, procs.rank, procs.world_size),
                                  -(-len(images) // procs.world_size), batch_size)
    with torch.no_grad():
        for x, y in batches:
            with autocast:
                logits = forward(x)
            totals[0] += F.cross_entropy(logits.float(), y, reduction="sum")
            totals[1] += (logits.argmax(1) == y).sum()
    procs.sum(totals)
    loss_sum, correct = totals.tolist()
    return loss_sum / len(images), correct / len(images)


def _parameters_finite(model) -> bool:
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(list(model.parameters())))).all())


class Trainer:
    """Everything one run trains with, and the loop over its epochs."""

    def __init__(self, cfg: DictConfig, run_dir: Path, procs: distributed.Processes):
        self.cfg, self.run_dir, self.procs = cfg, run_dir, procs
        device = procs.device
        self.autocast = autocast_context(device, Precision(cfg.precision))
        torch.manual_seed(cfg.seed)
        self.data = build_data(cfg.dataset, device, cfg.channels_last)
        if cfg.batch_size > len(self.data.train):
            raise UserError(f"batch_size={cfg.batch_size} exceeds the {len(self.data.train)} training images")
        if cfg.batch_size % procs.world_size:
            raise UserError(f"batch_size={cfg.batch_size} is not divisible by the {procs.world_size} processes")
        self.local_batch = cfg.batch_size // procs.world_size
        self.micro_batch = micro_batch_size(cfg, self.local_batch, procs.world_size)
        self.steps_per_epoch = len(self.data.train) // cfg.batch_size

        model = build_model(cfg.model, self.data.num_classes).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.sync_batch_norm and procs.world_size > 1:
            if device.type != "cuda":  # DDP refuses SyncBatchNorm layers on any other device
                raise UserError(f"sync_batch_norm=true needs CUDA: torch's SyncBatchNorm does not run on "
                                f"{device.type}; set sync_batch_norm=false")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.lr = peak_lr(optimizer_settings(cfg.optimizer), cfg.batch_size, cfg.lr_factor)
        self.optimizer = build_optimizer(cfg.optimizer, model, self.lr, "inductor" if cfg.compile_optimizer else None)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch, cfg.epochs)
        self.noise_scale = NoiseScale(cfg.noise_scale_every, cfg.batch_size, self.local_batch, model.parameters(),
                                      device)
        compile_ = torch.compile if cfg.compile else (lambda module: module)
        self.eval_forward = compile_(model)
        if procs.world_size > 1:
            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            self.train_forward, self.no_sync = compile_(ddp), ddp.no_sync
        else:
            self.train_forward, self.no_sync = self.eval_forward, nullcontext

        self.rows: list[dict] = []
        self.epoch, self.step = 1, 0  # next step to run: (epoch, step within it)
        self.saved_at = (1, 0)  # where the newest checkpoint continues (the start while there is none)
        self.carried = None  # an interrupted epoch's totals, generator state and seconds so far
        self.seconds_before = 0.0  # wall time of earlier sessions of this run
        self.summary = {
            "status": "running",
            "seed": cfg.seed,
            "epochs_planned": cfg.epochs,
            "epochs": 0,
            "batch_size": cfg.batch_size,
            "world_size": procs.world_size,
            "micro_batch_size": self.micro_batch,
            "bn_batch_size": self.micro_batch * (procs.world_size if cfg.sync_batch_norm else 1),
            "lr_factor": cfg.lr_factor,
            "peak_lr": self.lr,
            "optimizer_step_compiled": bool(getattr(self.optimizer, "compile_backend", None)),  # MSGD's never is
            "steps_per_epoch": self.steps_per_epoch,
            "train_images": len(self.data.train),
            "test_images": len(self.data.test),
            "data_fingerprint": self.data.fingerprint,
            "data_official": self.data.official,
            "holdout_images": len(self.data.holdout) if self.data.holdout is not None else 0,
            "parameters": sum(p.numel() for p in model.parameters()),
            "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True, enum_to_str=True),
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),  # what reruns compare
            "resumed_at": [],
            **records.environment(device),
        }

    # -- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self, carried=None) -> None:
        noise_scale = self.noise_scale.state_dict(self.procs)  # every process's: all take part
        if not self.procs.is_main:
            return
        checkpoint.save(self.run_dir, {
            "epoch": self.epoch, "step": self.step, "carried": carried,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rows": self.rows, "rng": checkpoint.capture_rng(),
            "seconds": self.seconds_before + time.perf_counter() - self.session_start,
            "resumed_at": self.summary["resumed_at"], "first_session": records.session(self.summary),
            "noise_scale": noise_scale,
        })
        self.saved_at = (self.epoch, self.step)

    def load_checkpoint(self) -> None:
        state = checkpoint.load(self.run_dir, self.procs.device)
        checkpoint.restore(self.run_dir, state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        checkpoint.restore_rng(state["rng"])
        self.noise_scale.load_state_dict(state.get("noise_scale"), self.procs)
        self.rows, self.epoch, self.step = state["rows"], state["epoch"], state["step"]
        self.saved_at = (self.epoch, self.step)
        self.carried, self.seconds_before = state["carried"], state["seconds"]
        # The summary keeps the start's hardware and code; this continuation notes where its own differ.
        this_session = records.session(self.summary)
        first_session = records.session(state.get("first_session", this_session))
        self.summary.update(first_session)
        changed = {key: value for key, value in this_session.items() if first_session.get(key) != value}
        self.summary["resumed_at"] = [*state["resumed_at"], {"epoch": self.epoch, "step": self.step, **changed}]
        log.info("continuing from the checkpoint at epoch %d, step %d", self.epoch, self.step)

    # -- the loop --------------------------------------------------------------------------

    def fit(self, stop: StopRequest, logger: NullLogger) -> dict:
        cfg, procs = self.cfg, self.procs
        self.session_start = time.perf_counter()
        failure = None
        try:
            self.record({"status": "running"})
            if procs.is_main:
                records.write_metrics(self.run_dir, self.rows)  # readers find the file from the start
                log.info("run folder %s", self.run_dir)
                if warning := small_micro_batch_warning(cfg, self.local_batch, self.micro_batch, procs.world_size):
                    log.warning(warning)
                compiled = " (compiled step)" if self.summary["optimizer_step_compiled"] else ""
                log.info("%s%s on %s x%d (%s): %d steps/epoch of %d images (micro-batches of %d), peak lr %.4g",
                         optimizer_settings(cfg.optimizer).name, compiled, self.summary["device_name"],
                         procs.world_size, procs.device.type, self.steps_per_epoch, cfg.batch_size, self.micro_batch,
                         self.lr)
            with Progress(cfg.epochs * self.steps_per_epoch, self.global_step, procs.is_main) as progress:
                while self.epoch <= cfg.epochs:
                    outcome = self.train_epoch(stop, progress, logger)
                    if outcome is not None:
                        return self.record(outcome)
        except (Interrupted, KeyboardInterrupt) as err:  # KeyboardInterrupt: a second signal, no checkpoint
            epoch, step = self.saved_at
            del self.rows[epoch - 1:]  # an epoch whose checkpoint a second signal cut short is trained again
            self.record({"status": "interrupted", "interrupted_epoch": epoch, "interrupted_step": step,
                         "interrupted_by": err.cause if isinstance(err, Interrupted) else "a second signal"})
            raise
        except torch.OutOfMemoryError as err:
            failure = UserError(self.out_of_memory_message(err))
        except OSError as err:  # a full disk, an unwritable folder
            failure = UserError(f"cannot write {err.filename or self.run_dir}: {err.strerror or err}; free space "
                                "or fix the folder, then run the same command again to continue")
        except Exception as err:  # a bug, or an error it cannot name (CPU memory): recorded, then its traceback
            if not procs.lost_peer(err):
                self.record({"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0]})
                raise
            failure = LostPeer("; run the same command again to continue")
        if failure is not None:  # outside the handler, so the failed step's tensors are freed
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                self.record({"status": "failed", "error": str(failure)})
            except OSError:
                pass  # the earlier summary.json stays whole
            raise failure
        return self.record({"status": "completed"})

    def out_of_memory_message(self, err: BaseException) -> str:
        if any(frame.f_code is evaluate.__code__ for frame, _ in traceback.walk_tb(err.__traceback__)):
            return f"out of GPU memory evaluating batches of eval_batch_size={self.cfg.eval_batch_size} images; " \
                   "set a smaller eval_batch_size"
        failed = f"out of GPU memory in a forward/backward pass of a micro-batch of {self.micro_batch} images " \
                 f"(batch_size={self.cfg.batch_size} over {self.procs.world_size} process(es))"
        if self.micro_batch == 1:
            return f"{failed}; not even one image fits: choose a smaller model, or precision=bf16"
        half = largest_divisor(self.local_batch, self.micro_batch // 2)
        if self.cfg.micro_batch_size is not None:  # it overrides max_micro_batch_size: that advice would not apply
            return f"{failed}; set micro_batch_size={half} (a divisor of each process's {self.local_batch} images)"
        return f"{failed}; set max_micro_batch_size={half} or a smaller micro_batch_size"

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> float:
        """One optimizer step on this process's share (x, y) of a global batch; adds loss,
        correct count and a non-finite flag to `totals`; returns the step's LR."""
        lr = self.optimizer.param_groups[0]["lr"]
        probe = self.noise_scale.probe(self.global_step)
        loss, correct = train_step(self.train_forward, self.optimizer, x, y, self.micro_batch, self.autocast,
                                   self.no_sync, probe)
        self.scheduler.step()
        totals[0] += loss
        totals[1] += correct
        totals[2] += ~torch.isfinite(loss)
        return lr

    @property
    def global_step(self) -> int:
        """Optimizer steps done since the run began (over all its sessions)."""
        return (self.epoch - 1) * self.steps_per_epoch + self.step

    def shard(self) -> slice:
        """This process's slice of every global batch."""
        return slice(self.procs.rank * self.local_batch, (self.procs.rank + 1) * self.local_batch)

    def train_epoch(self, stop: StopRequest, progress: Progress, logger: NullLogger) -> dict | None:
        """Train and evaluate epoch `self.epoch` from step `self.step`; a dict ends the run early."""
        cfg, procs, data = self.cfg, self.procs, self.data
        epoch, start = self.epoch, time.perf_counter()
        # Loss sum, correct count and non-finite-loss count of this process (float64 on device).
        totals = torch.zeros(3, dtype=torch.float64, device=procs.device)
        seconds_before = 0.0
        if self.carried is not None:
            totals += carried_totals(self.carried["totals"], procs.rank, procs.world_size).to(procs.device)
            seconds_before = self.carried["seconds"]
            self.carried = None
        self.model.train()
        stopping = False  # decided by all processes together, so they stop at the same step
        batches = data.train.train_batches(cfg.seed, epoch, cfg.batch_size, self.shard(), self.step)
        for self.step, (x, y) in enumerate(batches, self.step + 1):
            lr = self.train_batch(x, y, totals)
            progress.step()
            at_check = is_readout(self.step, cfg.log_every, self.steps_per_epoch)
            if at_check:
                loss_sum, correct_sum, nonfinite = totals.tolist()
                if procs.any(nonfinite > 0):
                    return self.diverged("non-finite training loss")
                seen = self.step * self.local_batch
                live = {"loss": loss_sum / self.step, "accuracy": correct_sum / seen, "lr": lr,
                        "images_per_second": seen * procs.world_size / (seconds_before + time.perf_counter() - start)}
                progress.show(epoch, cfg.epochs, live["loss"], live["accuracy"], lr, live["images_per_second"])
                logger.log_step(self.global_step, live)
            if stop.requested if procs.world_size == 1 else (at_check and procs.any(stop.requested)):
                stopping = True
                if self.step < self.steps_per_epoch:
                    self.save_checkpoint({"totals": procs.gather(totals).cpu(),
                                          "seconds": seconds_before + time.perf_counter() - start})
                    raise Interrupted(stop.reason(), self.run_dir)
                break  # the epoch is complete: finish it, then stop at the epoch-end checkpoint

        procs.sum(totals)
        loss_sum, correct_sum, _ = totals.tolist()
        train_seconds = seconds_before + time.perf_counter() - start
        if not _parameters_finite(self.model):
            return self.diverged("non-finite parameters")
        # BatchNorm in inference mode: its running statistics, not each test batch's, and left as training
        # left them. Under DDP every process evaluates its shard with rank 0's, those of the checkpoint.
        self.model.eval()
        procs.broadcast(*self.model.buffers())
        scores = {f"{name}_{metric}": value for name, images in data.evaluated().items() for metric, value in
                  zip(("loss", "acc"), evaluate(self.eval_forward, images, cfg.eval_batch_size, self.autocast, procs,
                                                progress))}
        row = {
            "epoch": epoch, "lr": lr, "train_loss": loss_sum / (self.steps_per_epoch * procs.world_size),
            "train_acc": correct_sum / (self.steps_per_epoch * cfg.batch_size), **scores,
            "epoch_seconds": seconds_before + time.perf_counter() - start,
            "images_per_second": self.steps_per_epoch * cfg.batch_size / train_seconds,
            "noise_scale": self.noise_scale.read(procs),
        }
        self.rows.append(row)
        logger.log_epoch(self.global_step, row)
        self.epoch, self.step = epoch + 1, 0
        if procs.is_main:
            records.write_metrics(self.run_dir, self.rows)
            held_out = f"  holdout acc {row['holdout_acc']:.4f}" if "holdout_acc" in row else ""
            log.info("epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f%s  %.0f img/s", epoch, cfg.epochs,
                     row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"], held_out,
                     row["images_per_second"])
        self.save_checkpoint()
        self.record({"status": "running"})  # what a reader (or a run killed from now on) has so far
        # A stop that came while the epoch was evaluated stops here too, at the checkpoint just written,
        # rather than after the next epoch's first steps; every process asks, so they agree.
        if self.epoch <= cfg.epochs and (stopping or procs.any(stop.requested)):
            raise Interrupted(stop.reason(), self.run_dir)
        return None

    def diverged(self, reason: str) -> dict:
        """The run's result: it diverged, detected at this step (checks run every log_every steps)."""
        log.warning("diverged at epoch %d, step %d: %s", self.epoch, self.step, reason)
        return {"status": "diverged", "diverged_epoch": self.epoch, "diverged_step": self.step,
                "diverged_reason": reason}

    def record(self, outcome: dict) -> dict:
        """Write summary.json: `outcome` (the status and its details) and the figures of the epochs so far."""
        rows = self.rows
        self.summary.update(outcome)
        self.summary.update({
            "epochs": len(rows),
            "final_test_acc": rows[-1]["test_acc"] if rows and outcome["status"] == "completed" else None,
            "best_test_acc": max((r["test_acc"] for r in rows), default=None),
            "best_epoch": max(rows, key=lambda r: r["test_acc"])["epoch"] if rows else None,
            "final_holdout_acc": rows[-1].get("holdout_acc") if rows and outcome["status"] == "completed" else None,
            "final_train_loss": rows[-1]["train_loss"] if rows else None,
            "noise_scale": rows[-1].get("noise_scale") if rows else None,
            "wall_seconds": self.seconds_before + time.perf_counter() - self.session_start,
            # Images over training seconds: every epoch trains as many images, so the epochs' harmonic mean.
            "images_per_second": len(rows) / sum(1 / r["images_per_second"] for r in rows) if rows else None,
        })
        if self.procs.is_main:
            records.write_json(self.run_dir / records.SUMMARY_FILE, self.summary)
        return self.summary


def train(cfg: DictConfig, run_dir: Path, hydra_dir: Path | None = None) -> dict:
    """Train as `cfg` says in `run_dir`: from scratch, from its checkpoint, or not at all when
    the folder already holds a finished run (see `sngm_bench.run_folder`). `hydra_dir`: Hydra's
    files of this start, kept (`keep_hydra_files`) once it is sure to train. Its caller,
    `cli.train_job`, has checked `cfg`'s values (`config.check_values`) before torch was imported."""
    procs = distributed.setup(Device(cfg.device))
    try:
        with ExitStack() as stack:
            if procs.is_main:
                stack.enter_context(FolderLock(run_dir))
            plan = plan_run(run_dir, cfg, cfg.overwrite)
            procs.barrier()  # every process has read the folder before the first write
            if plan is Plan.skip:
                summary = records.read_summary(run_dir)
                if procs.is_main:
                    log.info("%s already holds a %s run; nothing to do. overwrite=true trains it again",
                             run_dir, summary["status"])  # its accuracy: the end-of-run line, in %
                return summary
            trainer = Trainer(cfg, run_dir, procs)
            if plan is Plan.resume:
                check_same_data(run_dir, trainer.summary)
                trainer.load_checkpoint()
            elif procs.is_main:
                clear_run(run_dir)
            if procs.is_main:
                remove_partial_writes(run_dir)
            logger = open_logger(cfg.logger, run_dir, procs.is_main, trainer.global_step)
            stack.enter_context(closing(logger))
            if procs.is_main:
                keep_hydra_files(hydra_dir, cfg)
            with StopRequest(deadline(cfg.max_minutes)) as stop:
                summary = trainer.fit(stop, logger)
                if stop.requested:  # it came after the last step: this run is done, the command stops
                    raise Interrupted(stop.reason(), run_dir)
                return summary
    except Exception as err:
        if procs.lost_peer(err):  # before training: DDP's first broadcast, a barrier
            raise LostPeer() from None
        raise
    finally:
        procs.close()
