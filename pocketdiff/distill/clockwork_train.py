"""Stage ``clockwork-train``: distil a Clockwork adaptor on the deployed sampler's own trajectories.

As the seed does (model-step distillation), the data are not forward-noised training images but trajectories
unrolled from pure noise: ``n_trajectories`` train captions, each sampled with the runtime's own loop
(``runtime/sampler.py`` on the input pipeline's torch modules) with the deployed ``scheduler``, ``sampler_steps``
and ``guidance`` and the UNet's own guidance (two-pass CFG at batch 2, or a guidance-embedded UNet's single pass);
every UNet call's inputs are recorded (``WORKDIR/trajectories.safetensors``, written once, atomically).

Each training example is a light step i of a trajectory and a cache age d (1 <= d <= ``max_gap``: the clock
periods 2 .. max_gap + 1 light a step at most max_gap steps after a full one): the frozen UNet gives the cache
(the inner part's ``lowres_out`` at step i - d) and, at step i, ``lowres_in``, the time embedding, the outer skips
and the targets. The adaptor predicts ``lowres_out`` at step i; two named terms, weighted and logged:

- ``feature``: MSE to the inner part's real ``lowres_out`` at step i;
- ``output``: MSE of the UNet output through the outer up path (the frozen blocks, gradients through their
  activations) to the full UNet's output at step i: what the sampler sees.

``identity_feature`` logs the identity adaptor's feature error (the cache as it is), the ablation's baseline, on the
same examples. The loop is the shared resumable one (``pocketdiff/loop.py``);
batches are drawn from a generator seeded by the step. Only the adaptor trains; the UNet is frozen.
The output is a pipeline whose UNet is a :class:`~pocketdiff.architectures.clockwork_unet.ClockworkUNet2DConditionModel`
with the trained adaptor and the clock (``period`` or ``light_steps``) for the deployed sampler, which its stage
record pins: the export after it writes the full and light graphs and the ``clockwork`` policy with those defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pocketdiff.architectures.clockwork_unet import (as_clockwork_unet, build_adaptor, check_split, outer_down, outer_up,
                                                     split_forward, time_embedding)
from pocketdiff.distill.data import captioned_samples, check_data_source
from pocketdiff.distributed import device
from pocketdiff.errors import PocketdiffError
from pocketdiff.export.roles import ROLES
from pocketdiff.export.torch_session import torch_runtime
from pocketdiff.loop import LoopConfig, check_lr_schedule, lr_schedule, train
from pocketdiff.pinned import deployed_sampler
from pocketdiff.pipedir import (StageRecord, atomic_output_file, inspect_pipeline, load_pipeline, read_history,
                                start_stage, write_pipeline)
from pocketdiff.runtime.policies import UNET, clock_schedule, default_policy_name, make_policy
from pocketdiff.runtime.sampler import VAE_DECODER
from pocketdiff.runtime.schedulers import get_scheduler_entry
from pocketdiff.runtime.sessions import ShapeSession


@dataclass
class ClockworkTrainConfig:
    boundary: int = 1  # outer resolution levels (SD1.5: 1 = the 64x64 level outside, 32x32 and below inside)
    adaptor: str = "trained"  # "trained", or "identity" (output = cache; nothing to train)
    adaptor_channels: int = 0  # 0: lowres_in's channels
    adaptor_blocks: int = 2
    scheduler: str = ""  # the deployed sampler; "": the pipeline's pinned one, else its own
    sampler_steps: int = 0  # 0: the pipeline's pinned steps (a distilled student's), else 25
    guidance: float = 0.0  # 0: the pipeline's pinned guidance, else 7.5
    max_gap: int = 3  # cache ages trained: 1 .. max_gap steps (clock periods up to max_gap + 1)
    period: int = 2  # the clock written into the UNet's schedule: step i is light when i % period != 0 ...
    light_steps: tuple[int, ...] = ()  # ... or exactly these steps (the first and last are always full)
    n_trajectories: int = 1000
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    lr_schedule: str = "cosine"
    w_feature: float = 1.0
    w_output: float = 1.0
    data: str = "toyworld"
    feature_cache: bool = True  # hold every step's lowres_out and UNet output in memory (N x S x B x R x s x s
    # floats: 0.5 GB for 2000 toy trajectories); off: the frozen UNet recomputes them every step (SD1.5 scale)
    checkpoint_every: int = 250
    seed: int = 0

    def validate(self) -> "ClockworkTrainConfig":
        if self.adaptor not in ("trained", "identity"):
            raise PocketdiffError(f"clockwork adaptor must be 'trained' or 'identity', got {self.adaptor!r}")
        if self.adaptor_channels < 0 or self.adaptor_blocks < 0 or self.max_gap < 1:
            raise PocketdiffError(f"clockwork-train needs adaptor_channels >= 0, adaptor_blocks >= 0, max_gap >= 1; got "
                                  f"{self.adaptor_channels}, {self.adaptor_blocks}, {self.max_gap}")
        if self.steps < 0 or self.batch_size < 1 or self.n_trajectories < 1 or self.checkpoint_every < 1:
            raise PocketdiffError(f"clockwork-train needs steps >= 0, batch_size >= 1, n_trajectories >= 1, "
                                  f"checkpoint_every >= 1; got {self.steps}, {self.batch_size}, {self.n_trajectories}, "
                                  f"{self.checkpoint_every}")
        if self.lr <= 0 or min(self.w_feature, self.w_output) < 0 or self.w_feature + self.w_output == 0:
            raise PocketdiffError(f"lr must be > 0 and the loss weights >= 0, not both 0; got lr {self.lr}, weights "
                                  f"{self.w_feature}, {self.w_output}")
        if self.scheduler:
            get_scheduler_entry(self.scheduler)
        if self.sampler_steps < 0 or self.guidance < 0:
            raise PocketdiffError(f"sampler_steps and guidance must be >= 0 (0: the pipeline's pinned), got "
                                  f"{self.sampler_steps}, {self.guidance}")
        check_lr_schedule(self.lr_schedule)
        check_data_source(self.data, "clockwork-train data source")
        make_policy("clockwork", {"period": self.period, "light_steps": list(self.light_steps)})
        return self

    def adaptor_config(self) -> dict:
        return {"kind": self.adaptor, "channels": self.adaptor_channels or None, "blocks": self.adaptor_blocks}


class _Recorder:
    """A UNet session that keeps every call's feeds."""

    def __init__(self, session):
        self.session, self.inputs, self.outputs = session, session.inputs, session.outputs
        self.fixed_batch, self.path, self.calls = session.fixed_batch, session.path, []

    def run(self, feeds):
        self.calls.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.session.run(feeds)


def record_trajectories(pipe, pipeline_dir, cfg: ClockworkTrainConfig, sampler: tuple[str, int, float],
                        progress: bool) -> dict[str, torch.Tensor]:
    """Per trajectory the UNet's inputs at every step: ``sample`` [N, S, B, C, h, w], ``hidden`` [N, B, 77, D]
    (the same at every step), ``timestep`` [S], and for a guidance-embedded UNet ``timestep_cond`` [N, B, W]."""
    from tqdm import tqdm

    scheduler, steps, guidance = sampler
    info = inspect_pipeline(pipeline_dir)
    roles = [r for r in ROLES if not ROLES[r].optional]
    policy = make_policy(default_policy_name(["timestep_cond"] if pipe.unet.config.time_cond_proj_dim else []))
    rt = torch_runtime(pipe, info.tokenizer_dir, get_scheduler_entry(scheduler).config_for(info.scheduler_config),
                       policy, roles=roles)
    rec = _Recorder(rt.sessions[UNET])
    decoder = rt.sessions[VAE_DECODER]
    rt = rt.with_sessions({**rt.sessions, UNET: rec, VAE_DECODER: ShapeSession(decoder.inputs, decoder.outputs)})
    captions = captioned_samples(cfg.data, cfg.n_trajectories, cfg.seed + 29, "train").captions
    samples, hidden, cond = [], [], []
    for i, caption in enumerate(tqdm(captions, desc="clockwork trajectories", disable=not progress)):
        rec.calls.clear()
        rt.generate(caption, steps=steps, guidance=guidance, seed=cfg.seed * 1_000_003 + i, scheduler=scheduler,
                    truncate=True)
        samples.append(np.stack([c["sample"] for c in rec.calls]))
        hidden.append(rec.calls[0]["encoder_hidden_states"])
        if "timestep_cond" in rec.calls[0]:
            cond.append(rec.calls[0]["timestep_cond"])
    out = {"sample": torch.from_numpy(np.stack(samples)), "hidden": torch.from_numpy(np.stack(hidden)),
           "timestep": torch.tensor([float(c["timestep"]) for c in rec.calls])}
    if cond:
        out["timestep_cond"] = torch.from_numpy(np.stack(cond))
    return out


def load_trajectories(pipe, pipeline_dir, cfg: ClockworkTrainConfig, sampler, workdir: Path, progress: bool):
    """The recorded trajectories, recorded once per work dir; a work dir holding other ones is refused."""
    path = workdir / "trajectories.safetensors"
    made_by = json.dumps({"pipeline": str(Path(pipeline_dir).resolve()), "sampler": list(sampler), "data": cfg.data,
                          "n_trajectories": cfg.n_trajectories, "seed": cfg.seed}, sort_keys=True)
    if not path.is_file():
        data = record_trajectories(pipe, pipeline_dir, cfg, sampler, progress)
        with atomic_output_file(path) as tmp:
            save_file(data, str(tmp), metadata={"made_by": made_by})
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("made_by") != made_by:
            raise PocketdiffError(f"{path} holds trajectories of another pipeline, sampler or data draw; use a new work "
                                  "dir or delete it")
    return load_file(str(path))


class AdaptorJob:
    """``batch(step)`` and ``loss(models, batch)`` for :func:`pocketdiff.loop.train`: the adaptor (``models[0]``)
    against the frozen ``unet`` split at ``boundary``."""

    def __init__(self, unet, boundary: int, traj: dict[str, torch.Tensor], cfg: ClockworkTrainConfig,
                 progress: bool = False):
        self.unet, self.r, self.traj, self.cfg = unet.to(device()), boundary, traj, cfg
        self.n, self.s = traj["sample"].shape[:2]
        if self.s < 3:
            raise PocketdiffError(f"clockwork needs at least 3 sampler steps (the first and last are full); got {self.s}")
        self.features = self._precompute(progress) if cfg.feature_cache else None

    def _conditioning(self, j: torch.Tensor, i: torch.Tensor):
        """(hidden [n B, 77, D], timestep_cond or None, timesteps [n B]) of trajectories j at steps i."""
        tr, per = self.traj, self.traj["hidden"].shape[1]  # B: 2 under two-pass CFG
        cond = self._flat(tr["timestep_cond"][j]) if "timestep_cond" in tr else None
        return self._flat(tr["hidden"][j]), cond, tr["timestep"][i].repeat_interleave(per).to(device())

    def _full(self, j: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the UNet output, lowres_out) [n B, ...] of trajectories j at steps i, by the frozen UNet."""
        hidden, cond, t = self._conditioning(j, i)
        with torch.no_grad():
            return split_forward(self.unet, self.r, self._flat(self.traj["sample"][j, i]), t, hidden, cond)

    def _precompute(self, progress: bool) -> dict[str, torch.Tensor]:
        """Every trajectory step's UNet output and lowres_out, [N, S, B, ...], 64 trajectory steps a batch."""
        from tqdm import tqdm

        jj, ii = torch.meshgrid(torch.arange(self.n), torch.arange(self.s), indexing="ij")
        jj, ii = jj.reshape(-1), ii.reshape(-1)
        outs, lows = [], []
        for a in tqdm(range(0, len(jj), 64), desc="clockwork features", disable=not progress):
            out, low = self._full(jj[a:a + 64], ii[a:a + 64])
            outs.append(out.cpu())
            lows.append(low.cpu())
        per = self.traj["hidden"].shape[1]
        return {k: torch.cat(v).reshape(self.n, self.s, per, *v[0].shape[1:]) for k, v in (("out", outs), ("low", lows))}

    def batch(self, step: int) -> tuple:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step + 31)
        j = torch.randint(0, self.n, (self.cfg.batch_size,), generator=g)
        i = torch.randint(1, self.s - 1, (self.cfg.batch_size,), generator=g)  # light-able: not the first or last
        gap = 1 + (torch.rand(self.cfg.batch_size, generator=g) * torch.clamp(i, max=self.cfg.max_gap)).long()
        return j, i, i - gap

    def _flat(self, x: torch.Tensor) -> torch.Tensor:  # [N', B, ...] -> [N' B, ...]
        return x.reshape(-1, *x.shape[2:]).to(device())

    def loss(self, models, b) -> dict:
        j, i, k = b
        u, r = self.unet, self.r
        hidden, cond, t_i = self._conditioning(j, i)  # [bs B, 77, D], ..., [bs B]
        if self.features is not None:
            cache, target = self._flat(self.features["low"][j, k]), self._flat(self.features["low"][j, i])
            target_out = self._flat(self.features["out"][j, i])
        else:
            cache = self._full(j, k)[1]
            target_out, target = self._full(j, i)
        with torch.no_grad():
            x_i = self._flat(self.traj["sample"][j, i])  # [bs B, C, h, w]
            emb = time_embedding(u, x_i, t_i, cond)
            skips, lowres_in = outer_down(u, r, x_i, emb, hidden)
        pred = models[0](cache, lowres_in, emb)
        out = outer_up(u, r, pred, skips, emb, hidden)
        terms = {"feature": F.mse_loss(pred, target), "output": F.mse_loss(out, target_out),
                 "identity_feature": F.mse_loss(cache, target)}
        terms["loss"] = self.cfg.w_feature * terms["feature"] + self.cfg.w_output * terms["output"]
        return terms


def clockwork_train(pipeline_dir: str | Path, out_dir: str | Path, cfg: ClockworkTrainConfig, workdir: str | Path,
                    stop_after: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Train the adaptor for ``pipeline_dir``'s UNet; write the pipeline with its Clockwork UNet to ``out_dir``."""
    from diffusers import StableDiffusionPipeline

    cfg.validate()
    workdir = start_stage(out_dir, workdir, overwrite)
    pipe = load_pipeline(pipeline_dir)
    check_split(pipe.unet, cfg.boundary)
    sampler = deployed_sampler(pipeline_dir, cfg.scheduler, cfg.sampler_steps, cfg.guidance)
    clock_schedule(sampler[1], cfg.period, cfg.light_steps)  # light_steps fit the deployed steps
    torch.manual_seed(cfg.seed)
    pipe.unet.eval().requires_grad_(False)
    adaptor = build_adaptor(dict(pipe.unet.config), cfg.boundary, cfg.adaptor_config())
    summary = {"sampler": list(sampler)}
    if cfg.adaptor == "trained":
        traj = load_trajectories(pipe, pipeline_dir, cfg, sampler, workdir, progress)
        job = AdaptorJob(pipe.unet, cfg.boundary, traj, cfg, progress)
        opt = torch.optim.AdamW(adaptor.parameters(), lr=cfg.lr, weight_decay=0.0)
        summary.update(train(workdir, [adaptor], opt, job.batch, job.loss,
                             LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                             {**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve())}, name="clockwork-train",
                             stop_after=stop_after, lr_scheduler=lr_schedule(opt, cfg.lr_schedule, cfg.steps, cfg.lr)))
    scheduler, steps, guidance = sampler
    pins = {"steps": steps, "guidance": guidance, "scheduler": scheduler}
    schedule = {**pins, "period": cfg.period, "light_steps": list(cfg.light_steps)}
    unet = as_clockwork_unet(pipe.unet.cpu(), cfg.boundary, cfg.adaptor_config(), schedule,
                             adaptor_state={k: v.cpu() for k, v in adaptor.state_dict().items()})
    out = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    history = [*read_history(pipeline_dir), StageRecord("clockwork-train", {**asdict(cfg), "pins": pins,
                                                                            "summary": summary})]
    return write_pipeline(out, out_dir, history, overwrite=overwrite)
