"""Several processes (``accelerate launch`` / ``torchrun``): who writes, and where they wait for each other.

Every process runs the same stages. The training loops are accelerate loops, so each process trains on
its own batches and the gradients are averaged. Everything else follows three rules:

- Only the main process (``RANK`` 0, or no launcher) writes files. :func:`pocketdiff.pipedir.atomic_output_dir`
  and :func:`~pocketdiff.pipedir.atomic_output_file` hand the other processes a scratch path that is
  thrown away, so a stage's code writes the same way in one process or many.
- A process that reads what the main process wrote waits for it first (:func:`barrier`).
- A decision taken from measured numbers (the evolution's next action) is the main process's, sent to
  the others (:func:`broadcast`), so float noise between devices cannot split the processes' paths.

With one process all three are no-ops.
"""

from __future__ import annotations

import os
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def state():
    """accelerate's process state, set up as the training loops' ``Accelerator`` sets it up (the CPU when
    there is no GPU: with a launcher, a gloo process group), so whichever comes first, they agree."""
    import datetime

    import torch
    from accelerate import PartialState

    # the other processes wait while the main one alone measures a latency table or saves a pipeline
    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=2))


def device():
    """The device a training process works on: its GPU under a launcher, the GPU, or the CPU."""
    return state().device


def barrier() -> None:
    """Wait for every process."""
    if world_size() > 1:
        state().wait_for_everyone()


def finish() -> None:
    """End the process group once the parallel work is done; the main process then goes on alone
    (torchmetrics would otherwise try to sync its FID with processes that have stopped)."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every process (a picklable object)."""
    if world_size() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    state()
    return broadcast_object_list([obj], from_process=0)[0]
