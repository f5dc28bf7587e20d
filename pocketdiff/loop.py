"""The resumable training loop every pocketdiff training job uses (accelerate-based): the SnapFusion stages
in ``distill/`` and the toy teacher's parts in ``toyworld/``.

A job is ``(models, optimizer, batch_fn, loss_fn)``:

* ``batch_fn(step)`` returns the batch for a global step, deterministically, so a resumed run sees the
  same data as an uninterrupted one;
* ``loss_fn(models, batch)`` gets the accelerate-prepared models (DDP-wrapped on several GPUs) and returns
  named loss terms (BK-SDM style) with the weighted total under ``"loss"``;
  every term is logged separately to ``log.jsonl``: a row every ``log_every`` steps (and at the last),
  holding each term's mean over the steps since the row before (this run's steps, after a resume).

With ``LoopConfig.ema_decay`` > 0, diffusers' ``EMAModel`` keeps an exponential moving average of every
model's parameters (checkpointed with the rest, so a resumed run averages exactly as an uninterrupted
one); at the end it is copied into the models, which are then the averaged weights.

State (models, optimizer, RNG, EMA) is saved with ``accelerator.save_state`` every ``checkpoint_every``
steps into ``workdir/checkpoint`` (written to a temp folder, then renamed), together with the step
and a hash of the job config. Re-running with the same config resumes from there; a different
config is refused rather than silently mixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.pipedir import TRAIN_LOG

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")


def check_lr_schedule(kind: str) -> str:
    if kind not in LR_SCHEDULES:
        raise choice_error("learning-rate schedule", kind, LR_SCHEDULES)
    return kind


def lr_schedule(optimizer, kind: str, steps: int, lr: float):
    """The job's learning-rate scheduler for :func:`train`: None for ``constant``; ``cosine`` decays from
    ``lr`` to ``lr / 20`` at the last of ``steps``."""
    import torch

    check_lr_schedule(kind)
    if kind == "constant":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=lr / 20)


def check_ema_decay(decay: float) -> float:
    if not 0.0 <= decay < 1.0:
        raise PocketdiffError(f"ema_decay must be in [0, 1) (0 turns the EMA off), got {decay}")
    return decay


class Interrupted(Exception):
    """Raised by :func:`train` when ``stop_after`` ends a run early (after checkpointing)."""


@dataclass
class LoopConfig:
    steps: int
    checkpoint_every: int = 500
    log_every: int = 25
    grad_clip: float | None = 1.0
    progress: bool = True
    ema_decay: float = 0.0  # 0: off; else the EMA decay (diffusers EMAModel: min(decay, (1+n)/(10+n)) at update n+1)

    def __post_init__(self):
        if self.steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise PocketdiffError(f"bad loop config {self}: steps >= 0, checkpoint_every >= 1, log_every >= 1")
        check_ema_decay(self.ema_decay)


META = "pocketdiff_loop.json"  # written last into a checkpoint folder: a folder with it is complete


def recover_checkpoint(workdir: Path) -> None:
    """After a kill, leave ``workdir/checkpoint`` as the newest complete checkpoint. ``save`` writes the new one
    to ``checkpoint.tmp`` (its meta file last), moves the current one to ``checkpoint.old``, renames the new one
    into place, then deletes the old: killed in between, ``checkpoint`` is missing and ``checkpoint.old`` is the
    last complete one, so it is moved back; a half-written ``checkpoint.tmp`` is discarded by the next save."""
    ckpt, old = workdir / "checkpoint", workdir / "checkpoint.old"
    if not (ckpt / META).is_file() and (old / META).is_file():
        shutil.rmtree(ckpt, ignore_errors=True)
        old.rename(ckpt)
        log.info("%s: recovered the checkpoint a kill left as checkpoint.old", workdir)
    elif (ckpt / META).is_file():
        shutil.rmtree(old, ignore_errors=True)


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows of ``path`` (``log.jsonl``) up to ``step``, atomically; a torn last line is dropped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if row.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    tmp.replace(path)


def config_hash(config: Any) -> str:
    data = asdict(config) if hasattr(config, "__dataclass_fields__") else config
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def denoising_batch(step: int, seed: int, latents, ids, empty_ids, batch_size: int, caption_dropout: float,
                    num_timesteps: int) -> tuple:
    """The batch of global ``step`` for noise-prediction training, the same on every (resumed) run:
    (x0 [B, C, h, w], token ids [B, 77] with captions dropped to ``empty_ids`` for CFG, t [B], noise)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(latents), (batch_size,), generator=g)
    b_ids = ids[idx].clone()
    b_ids[torch.rand(batch_size, generator=g) < caption_dropout] = empty_ids
    t = torch.randint(0, num_timesteps, (batch_size,), generator=g)
    noise = torch.randn(latents[idx].shape, generator=g)
    return latents[idx], b_ids, t, noise


def train(workdir: str | Path, models: list, optimizer, batch_fn: Callable[[int], Any],
          loss_fn: Callable[[list, Any], dict], loop: LoopConfig, job_config: Any, name: str = "train",
          accelerator=None, stop_after: int | None = None, lr_scheduler=None) -> dict:
    """Run (or resume) a training job; returns steps done, the step it resumed from, and the wall time of
    this invocation (``session_wall_time_s``) and of the whole job over all resumed runs (``wall_time_s``).

    ``stop_after`` ends the run after that many steps of *this* invocation: it checkpoints, then raises
    :class:`Interrupted` (tests use it to simulate a killed run).
    """
    import torch
    from accelerate import Accelerator
    from tqdm import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from accelerate.utils import DistributedDataParallelKwargs, send_to_device

    # several processes: each trains on its own batches (below); a skipped block leaves parameters unused
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                     kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main, world, rank = acc.is_main_process, acc.num_processes, acc.process_index
    if lr_scheduler is not None:  # prepared so that save_state/load_state include it
        prepared = acc.prepare(*models, optimizer, lr_scheduler)
        models, optimizer, lr_scheduler = list(prepared[:-2]), prepared[-2], prepared[-1]
    else:
        prepared = acc.prepare(*models, optimizer)
        models, optimizer = list(prepared[:-1]), prepared[-1]
    params = [p for m in models for p in m.parameters()]
    ema = None
    if loop.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=loop.ema_decay)
        acc.register_for_checkpointing(ema)  # before load_state, so a resumed run restores the average
    ckpt, meta_file = workdir / "checkpoint", workdir / "checkpoint" / META
    want_hash = config_hash(job_config)
    start, previous_wall = 0, 0.0
    if main:
        recover_checkpoint(workdir)
    acc.wait_for_everyone()
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta["config_hash"] != want_hash:
            raise PocketdiffError(
                f"{workdir} holds a checkpoint of a different config ({meta['config_hash']} != {want_hash}); "
                "use a new work dir or delete it"
            )
        acc.load_state(str(ckpt))
        start, previous_wall = meta["step"], meta.get("wall_time_s", 0.0)
        if main:  # rows logged after this checkpoint (a run killed between checkpoints) are logged again
            truncate_log(workdir / TRAIN_LOG, start)
        log.info("%s: resuming from step %d", name, start)
    elif main:
        (workdir / TRAIN_LOG).unlink(missing_ok=True)
    acc.wait_for_everyone()  # no process starts on a log or checkpoint the main process is replacing

    def save(step: int) -> None:
        tmp, old = workdir / "checkpoint.tmp", workdir / "checkpoint.old"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # weights and optimizer from the main process, RNG states from each
        acc.wait_for_everyone()
        if main:
            wall = previous_wall + time.perf_counter() - t0  # cumulative over resumed runs
            (tmp / META).write_text(json.dumps({"step": step, "config_hash": want_hash, "wall_time_s": wall}))
            if ckpt.is_dir():  # the previous checkpoint stays until the new one is in place
                ckpt.rename(old)
            tmp.rename(ckpt)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    for m in models:
        m.train()
    t0 = time.perf_counter()
    bar = tqdm(total=loop.steps, initial=start, desc=name, disable=not loop.progress or not main)
    step = start
    sums: dict[str, float] = {}  # each term summed over the steps since the last log row
    with open(workdir / TRAIN_LOG, "a") if main else contextlib.nullcontext() as logf:
        while step < loop.steps:
            # batch_fn's index seeds the batch: one process sees the batches of steps 0, 1, 2, ...; with N
            # processes, process r sees N*step + r, so each trains on its own share of a global batch N x batch
            terms = loss_fn(models, send_to_device(batch_fn(step * world + rank), acc.device))
            optimizer.zero_grad(set_to_none=True)
            acc.backward(terms["loss"])
            if loop.grad_clip:
                acc.clip_grad_norm_(params, loop.grad_clip)
            optimizer.step()
            if lr_scheduler is not None:
                lr_scheduler.step()
            if ema is not None:
                ema.step(params)
            step += 1
            bar.update(1)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (step % loop.log_every == 0 or step == loop.steps) and main:
                count = step - max(start, (step - 1) // loop.log_every * loop.log_every)
                rec = {"step": step, **{k: v / count for k, v in sums.items()}}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                sums = {}
            interrupted = stop_after is not None and step - start >= stop_after
            if step % loop.checkpoint_every == 0 or step == loop.steps or interrupted:
                save(step)
            if interrupted:
                bar.close()
                raise Interrupted(f"{name}: stopped at step {step} of {loop.steps} (checkpointed)")
    bar.close()
    if ema is not None:  # the job's result is the average (the checkpoint keeps the raw weights and the EMA)
        ema.copy_to(params)
    for m in models:
        m.eval()
    session = time.perf_counter() - t0 if step > start else 0.0
    return {"steps": step, "resumed_from": start, "wall_time_s": previous_wall + session,
            "session_wall_time_s": session}
