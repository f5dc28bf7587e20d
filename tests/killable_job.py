"""A training job for the kill tests (tests/test_loop.py): run as a script, it trains a small model for STEPS
steps through pocketdiff's loop, checkpointing every step, and writes its final weights to WORKDIR/final.npy
and its run summary (where it resumed from) to WORKDIR/summary.json."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pocketdiff.loop import LoopConfig, train

STEPS = 300


def main(workdir: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))

    def batch_fn(step):
        return data[(step * 16) % 256:(step * 16) % 256 + 16]

    def loss_fn(models, x):
        return {"loss": ((models[0](x) - x.sum(1, keepdim=True)) ** 2).mean()}

    summary = train(workdir, [model], opt, batch_fn, loss_fn, LoopConfig(steps=STEPS, checkpoint_every=1, log_every=3,
                                                                         progress=False), {"job": "killable"})
    (workdir / "summary.json").write_text(json.dumps(summary))
    np.save(workdir / "final.npy", np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
