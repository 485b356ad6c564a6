"""Iterative training of RITM models with mask guidance (reference §7.4-§7.6), for fine-tuning.

:func:`run_finetune` trains (or fine-tunes) a model on instance-label data and writes a run folder:

``config.json``  the full :class:`TrainConfig` and the command line
``data.json``    what was read (images, objects, object sizes per data set)
``split.json``   which files/stacks are in training and which in validation
``log.csv`` / ``log.json``  one row per epoch (loss, lr, time, validation NoC and mIoU@k)
``curves.png``   loss, validation mIoU@k and NoC per epoch
``last.pth`` / ``best.pth``  official-format checkpoints with our metadata (load with
                 :func:`napari_ritm.model.load_checkpoint` or in the plugin)
``resume.pth``   optimiser, scheduler, position and RNG state for ``--resume``
``train.log``    the log messages

Per batch: K ~ U{0..max_num_next_clicks} simulated clicks are added without gradients with the
network in eval mode, each from the errors of the previous prediction whose probabilities are fed
back as the prev-mask channel; then one train-mode pass with gradients. Loss = NFL + 0.4 BCE(aux).

Randomness is re-seeded from ``(seed, rank, global step)`` at every step, so a resumed run
draws exactly the same batches, clicks and dropout masks as an uninterrupted one.

This module is the loop; the parts come from :mod:`.build`, saving and resuming from
:mod:`.checkpointing`, logs and messages from :mod:`.reporting`, settings from :mod:`.config`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ritm.errors import RitmError
from napari_ritm.progress import ProgressCallback

from . import budgeted, build, checkpointing, epochs, reporting, validation
from .budget import BudgetPlan
from .config import TrainConfig, default_milestones, describe_schedule
from .data import InstanceDataset
from .losses import NormalizedFocalLoss, SigmoidBinaryCrossEntropy, total_loss
from .report import TrainingReport, make_report
from .sampler import next_points

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "run_finetune"]

log = logging.getLogger(__name__)


class TrainingInterrupted(RitmError):
    """Training was stopped by Ctrl+C; a resumable state was saved (the message says where)."""


class Trainer:
    """One training run; :meth:`run` does the work (see :func:`run_finetune`).

    Lifecycle: ``Trainer(config)`` only stores the settings; :meth:`run` installs a Ctrl+C
    handler, calls :meth:`setup` (device, DDP, run folder, data, model, optimiser) and then
    loops over the epochs. Rank 0 writes every file; other DDP ranks only train.

    Attributes:
        config: the settings (for a resumed run: the stored ones, with the new epoch count).
        run_dir: the run folder.
        model: the unwrapped network (available after :meth:`setup`).
        rank, world_size: DDP position (0, 1 without torchrun).
        history: the ``log.csv`` rows so far.
    """

    def __init__(
        self,
        config: TrainConfig,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        datasets: list[InstanceDataset] | None = None,
        on_report: Callable[[TrainingReport], None] | None = None,
    ) -> None:
        self.config = config
        self.on_report = on_report
        self.extra_datasets = list(datasets or [])
        self.progress = progress
        self.should_stop = should_stop
        self.run_dir = Path(config.out).expanduser().resolve()
        self.rank, self.world_size, self.local_rank = build.distributed_env()
        self.model: torch.nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        self.best_key: list[float] | None = None
        self.best_metrics: dict[str, Any] | None = None
        self.start_epoch = 0
        self.start_iter = 0
        self.command = ""  # the command that started the run (kept on resume)
        self.resumed_with: list[dict[str, Any]] = []  # one entry per --resume
        self.init_source = ""
        self.precision = "float32"
        # Loss sums and training time of the current epoch (kept in resume.pth mid-epoch).
        self.epoch_sums: dict[str, float] = {}
        self.epoch_seconds = 0.0
        self._stop_flag = threading.Event()
        self._log_handler: logging.Handler | None = None
        self._resume_state: dict[str, Any] | None = None
        self._initialised_pg = False
        self._done = 0
        self._total = 0
        self.best_epoch: int | None = None
        self.plan: BudgetPlan | None = None  # the time budget's plan (budgeted runs)
        self.run_start = time.perf_counter()
        self.time_offset = 0.0  # time used by earlier sessions of a resumed run
        self.step_seconds = math.nan  # running estimate of one step's time
        self._recent_losses: list[tuple[int, float]] = []

    @property
    def steps_done(self) -> int:
        """Optimiser steps done (all sessions)."""
        return self._done

    @steps_done.setter
    def steps_done(self, value: int) -> None:
        self._done = int(value)

    @property
    def steps_total(self) -> int:
        """Optimiser steps planned."""
        return self._total

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Prepare everything before the first step (device, DDP, folder, data, model)."""
        cfg = self.config
        if not cfg.resume:  # settings are checked before anything is written
            cfg.validate(has_arrays=bool(self.extra_datasets))
        self.device = build.select_device(cfg, self.world_size, self.local_rank)
        self._setup_distributed()
        if cfg.resume:
            self.config, self._resume_state = checkpointing.load_resume(self.run_dir, cfg)
        elif self.is_main:
            checkpointing.prepare_new_run(self.run_dir)
        self.barrier()
        if self.is_main:
            self._log_handler = reporting.attach_log_file(self.run_dir)
        self.config.validate(has_arrays=bool(self.extra_datasets))
        if self.config.register and self.is_main:
            from .register import check_name

            check_name(self.config.register, self.config.register_overwrite)
        self.data = build.build_data(self.config, self.extra_datasets)
        self.emit_report("split")
        self._setup_model()
        build.set_train_mode(self.model, self.config.freeze_backbone)
        if self.is_main:
            self._record_command()
            reporting.write_run_files(self)
        log.info("schedule: %s", describe_schedule(self.config))
        log.info("precision: %s on %s", self.precision, self.device)

    def _record_command(self) -> None:
        """The starting command, or (on resume) one more ``resumed_with`` entry."""
        current = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
        if self._resume_state is None:
            self.command = current
            return
        self.resumed_with.append(
            {
                "command": current,
                "epoch": self.start_epoch,
                "iteration": self.start_iter,
                "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )

    def _setup_distributed(self) -> None:
        if self.world_size <= 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self._initialised_pg = True
        log.info("DDP rank %d/%d on %s", self.rank, self.world_size, self.device)

    def _setup_model(self) -> None:
        cfg = self.config
        model, self.init_source = build.build_model(cfg, self._resume_state, self.run_dir)
        if cfg.time_budget_s:
            cfg.milestones = []  # the budget plan drops the rate at a step instead
        if cfg.milestones is None:
            cfg.milestones = default_milestones(cfg.epochs)
        model.to(self.device)
        if self.device.type in ("cpu", "cuda"):
            # NHWC convolutions: ~1.3x faster training steps on CPU, identical maths.
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer, self.scheduler = build.build_optimizer(model, cfg)
        previous = (self._resume_state or {}).get("precision")
        self.precision = build.precision_of(cfg, self.device, model, previous)
        self.use_amp = self.precision == "float16 AMP"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.nfl = NormalizedFocalLoss(alpha=0.5, gamma=2.0)
        self.bce = SigmoidBinaryCrossEntropy()
        if self._resume_state is not None:
            checkpointing.restore(self, self._resume_state)
        self.net: torch.nn.Module = model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # The OCR query/key layers get no gradient with a single class (softmax over one
            # region is constant), so DDP must be told that some parameters stay unused.
            self.net = DDP(model, device_ids=ids, find_unused_parameters=True)

    # -- one step ------------------------------------------------------------------------------
    def _step_seed(self, step: int) -> np.random.Generator:
        torch.manual_seed((self.config.seed * 1_000_003 + step) * 101 + self.rank)
        return np.random.default_rng([self.config.seed, self.rank, step])

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step at global step index ``step``; returns the loss parts."""
        assert self.model is not None
        cfg = self.config
        rng = self._step_seed(step)
        per_rank = max(1, cfg.batch_size // self.world_size)
        images_np, points_np, gt_np = self.data.batcher.batch(rng, per_rank)
        images = torch.from_numpy(images_np).to(self.device)
        gt = torch.from_numpy(gt_np).to(self.device)
        points = points_np
        prev = torch.zeros_like(gt)
        num_clicks = int(rng.integers(0, cfg.max_num_next_clicks + 1))
        if num_clicks:
            # Simulated clicks from the model's own errors: eval mode, no gradients, the
            # unwrapped module (no DDP collectives, ranks may draw different counts).
            self.model.eval()
            with torch.no_grad(), self._autocast():
                for t in range(1, num_clicks + 1):
                    out = self.model(
                        torch.cat([images, prev], dim=1),
                        torch.from_numpy(points).to(self.device),
                    )
                    prev = torch.sigmoid(out["instances"].float())
                    points = next_points(prev.cpu().numpy(), gt_np, points, t, rng)
            build.set_train_mode(self.model, cfg.freeze_backbone)
        net_input = torch.cat([images, prev], dim=1).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            outputs = self.net(net_input, torch.from_numpy(points).to(self.device))
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, parts = total_loss(outputs, gt, nfl=self.nfl, bce=self.bce, aux_weight=cfg.aux_weight)
        if not torch.isfinite(loss):
            raise RitmError(
                f"the loss became {float(loss)} at step {step + 1}; lower the learning rate "
                "(--lr) or check the data, then resume from the last checkpoint"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        parts["clicks"] = float(num_clicks)
        return parts

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.precision == "float16 AMP":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.precision == "bfloat16 autocast":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def validate(self, epoch: int) -> dict[str, Any] | None:
        """Validation summary after ``epoch`` epochs (rank 0 only; None without objects)."""
        if not self.data.val_samples or not self.is_main:
            return None
        assert self.model is not None

        def report(done: int, total: int, name: str) -> None:
            if self.progress is not None:
                message = f"epoch {epoch}: validating {done}/{total}"
                self.progress(self._done, self._total, message)

        summary = validation.validate(
            self.model, self.data.val_samples, self.config, self.device, epoch, report
        )
        if self.data.general_samples:  # forgetting: the same loop on general objects
            summary["general"] = validation.validate(
                self.model, self.data.general_samples, self.config, self.device, epoch
            )
            summary["seconds"] += summary["general"]["seconds"]
        build.set_train_mode(self.model, self.config.freeze_backbone)
        return summary

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> Path:
        """Train; returns the checkpoint to use (``best.pth``, else ``last.pth``).

        Raises:
            TrainingInterrupted: after Ctrl+C (a resumable state was saved first).
            RitmError: bad settings, data or checkpoints, or a full disk.
        """
        previous_handler = None
        if threading.current_thread() is threading.main_thread():

            def _on_sigint(signum: int, frame: Any) -> None:
                # First Ctrl+C: stop cleanly after this step; a second one aborts.
                if self._stop_flag.is_set():
                    raise KeyboardInterrupt
                self._stop_flag.set()
                log.warning("Ctrl+C: stopping after the current step (press again to abort)")

            previous_handler = signal.signal(signal.SIGINT, _on_sigint)
        try:
            self.setup()
            return self._finish(self._loop())
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if self._log_handler is not None:
                logging.getLogger("napari_ritm_training").removeHandler(self._log_handler)
                self._log_handler.close()
            if self._initialised_pg:
                import torch.distributed as dist

                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def _stop_requested(self) -> bool:
        stop = self._stop_flag.is_set() or bool(self.should_stop and self.should_stop())
        if self.world_size > 1:  # every rank stops at the same step
            import torch.distributed as dist

            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            dist.all_reduce(flag)
            stop = bool(flag.item() > 0)
        return stop

    def _loop(self) -> Path:
        cfg = self.config
        if cfg.time_budget_s and self.plan is None:
            budgeted.start(self)  # first validation + warm-up steps, then the plan
        ipe = cfg.iters_per_epoch
        self._total = cfg.epochs * ipe
        self._done = self.start_epoch * ipe + self.start_iter
        session_start = time.perf_counter()
        session_steps = 0
        epoch, it = self.start_epoch, self.start_iter
        interrupted = short = False
        report_every = max(1, self._total // 100)
        try:
            if (epoch, it) == (0, 0) and not self.history and cfg.val_every > 0:
                epochs.validate_start(self)
            for epoch in range(self.start_epoch, cfg.epochs):
                resumed = epoch == self.start_epoch and self.start_iter > 0
                sums: dict[str, float] = dict(self.epoch_sums) if resumed else {}
                self.epoch_sums = sums
                earlier = self.epoch_seconds if resumed else 0.0
                epoch_start = time.perf_counter()
                it = self.start_iter if resumed else 0
                stopped = False
                while it < ipe or budgeted.extends(self, epoch, it):
                    if self._stop_requested():
                        stopped = True
                        break
                    if self.plan is not None and not budgeted.step_fits(self, epoch):
                        short = True  # the budget ends this epoch early; it is still validated
                        break
                    self._total = max(self._total, self._done + 1)  # past the plan: extends
                    step_start = time.perf_counter()
                    parts = self.train_step(epoch * ipe + it)
                    it += 1
                    self._done += 1
                    session_steps += 1
                    if self.plan is not None:
                        budgeted.after_step(self, time.perf_counter() - step_start)
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v
                    self.epoch_seconds = earlier + time.perf_counter() - epoch_start
                    self.note_loss(self._done, parts["loss"])
                    per_step = (time.perf_counter() - session_start) / session_steps
                    if self.plan is None:
                        self.step_seconds = per_step
                    self.progress_message(
                        reporting.step_message(
                            epoch + 1, cfg.epochs, it, max(ipe, it), parts["loss"], per_step,
                            self._remaining(per_step),
                        )
                    )  # fmt: skip
                    if self._done % report_every == 0:
                        self.emit_report("step")
                    if (
                        cfg.checkpoint_every
                        and self._done % cfg.checkpoint_every == 0
                        and self.is_main
                        and it < ipe
                    ):
                        checkpointing.save_resume(self, epoch, it)
                if stopped:
                    break
                epochs.end_epoch(self, epoch, sums, it, time.perf_counter() - epoch_start + earlier)
                it = 0
                if short:
                    break
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or self._stop_flag.is_set()
        if self.world_size > 1 and not interrupted:
            self.sync_buffers()
            self.barrier()
        finished = self._done >= self._total or short
        if self.is_main:
            if not finished:
                pos_epoch, pos_it = (epoch, it) if it < ipe else (epoch + 1, 0)
                path = checkpointing.save_resume(self, pos_epoch, pos_it)
                checkpointing.save_weights(
                    self, checkpointing.LAST_FILE, pos_epoch, pos_epoch * ipe + pos_it, None
                )
                log.info("stopped at step %d/%d; state saved to %s", self._done, self._total, path)
            if interrupted:
                raise TrainingInterrupted(
                    f"training interrupted at step {self._done}/{self._total}; continue with "
                    f"napari-ritm-finetune --resume --out {self.run_dir}"
                )
        best = self.run_dir / checkpointing.BEST_FILE
        return best if best.is_file() else self.run_dir / checkpointing.LAST_FILE

    def _remaining(self, per_step: float) -> float:
        """Estimated seconds left: the budget's rest, else steps left x seconds per step."""
        if self.plan is not None:
            return max(0.0, self.plan.budget_s - budgeted.elapsed(self))
        return per_step * (self._total - self._done)

    def note_loss(self, step: int, loss: float) -> None:
        """Keep a step's loss for the reports' live curve (a bounded, thinned trace)."""
        trace = self._recent_losses
        trace.append((step, float(loss)))
        if len(trace) > 400:  # keep every other point: the curve's shape, bounded memory
            del trace[: len(trace) - 200 : 2]

    def progress_message(self, message: str) -> None:
        """Send ``message`` to the progress callback with the current step counts."""
        if self.progress is not None:
            self.progress(self._done, self._total, message)

    def emit_report(self, stage: str, **extra: Any) -> None:
        """Call ``on_report`` with the current :class:`TrainingReport` (rank 0 only)."""
        if self.on_report is None or not self.is_main:
            return
        remaining = None
        if self.plan is not None:
            remaining = max(0.0, self.plan.budget_s - budgeted.elapsed(self))
        elif math.isfinite(self.step_seconds):
            remaining = self.step_seconds * (self._total - self._done)
        self.on_report(
            make_report(
                self,
                stage,
                elapsed_s=budgeted.elapsed(self),
                remaining_s=remaining,
                recent_losses=list(self._recent_losses),
                **extra,
            )
        )

    def sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (DDP only syncs them at forward)."""
        if self.world_size <= 1 or self.model is None:
            return
        import torch.distributed as dist

        for buf in self.model.buffers():
            dist.broadcast(buf, src=0)

    def _finish(self, checkpoint: Path) -> Path:
        """After the loop: record the final plan, register the best model, the "end" report."""
        registered = None
        if self.is_main:
            if self.plan is not None:
                self.plan.used_s = budgeted.elapsed(self)
                reporting.write_run_files(self)
            if self.config.register:
                from .register import register_model

                registered = register_model(self, checkpoint)
        self.emit_report("end", checkpoint=str(checkpoint), registered=registered)
        return checkpoint


def run_finetune(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    datasets: list[InstanceDataset] | None = None,
    on_report: Callable[[TrainingReport], None] | None = None,
) -> Path:
    """Train or fine-tune a RITM model as configured; see the module docstring for the outputs.

    Args:
        config: the run settings.
        progress: called as ``progress(done_steps, total_steps, message)`` after each step
            (message with loss and ETA) and during validation.
        should_stop: polled before each step; when it returns True the run saves a resumable
            state and ``last.pth`` and returns (used by the napari widget's Stop button).
        datasets: in-memory training data besides ``config.data``, e.g. napari layers made
            into datasets with :func:`napari_ritm_training.data.from_arrays` (pass them again
            when resuming such a run).
        on_report: called with a :class:`~napari_ritm_training.report.TrainingReport` when
            the split is known, after the first validation ("before"), every 1% of the steps,
            after each epoch and at the end (scores before -> now, curves, time left).

    Returns:
        Path of the checkpoint to use: ``best.pth`` when one was written, else ``last.pth``.

    Raises:
        TrainingInterrupted: after Ctrl+C (a resumable state was saved first).
        RitmError: bad settings, data or checkpoints (e.g. another architecture), or a full disk.
    """
    trainer = Trainer(
        config, progress=progress, should_stop=should_stop, datasets=datasets, on_report=on_report
    )
    return trainer.run()
