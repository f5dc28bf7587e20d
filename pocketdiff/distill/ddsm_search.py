"""Stage ``ddsm-search``: an evolutionary search for one UNet width per denoising step (DDSM).

For a given sampler, step count and guidance, a schedule is one width per step from the DDSM UNet's widths.
A genetic algorithm looks for the schedule that minimises

    fitness = proxy + lam * cost

- **cost**: the schedule's UNet compute per image as a fraction of the full width's at the same steps:
  MACs per width (counted with ``benchmarks/flops.py`` on each real width model) by default, or the
  per-width medians of a ``pocketdiff bench`` result of a bundle holding every width (``cost = "latency"``,
  ``latency_table`` = that JSON; a phone's bench drives the choice the same way).
- **proxy**: how far the schedule's final latents land from the full width's, for ``n_prompts`` captions of
  the data source's val split, one seed each: the mean squared difference, divided by that of the smallest
  uniform width (so 0 is the full model, 1 the cheapest uniform schedule). It is deterministic and needs no
  reference images; FID or attribute accuracy of a few dozen samples moves more with sampling noise than
  with one step's width. A schedule that leaves the full model's trajectory is penalised even when its images
  would still be fine, so the proxy errs on the safe side; FID and accuracy of the chosen schedule are then
  measured on 1000 prompts (``scripts/ddsm_toy.py``, docs/ddsm_toy.md).

Every schedule runs through the runtime's own loop (``runtime/sampler.py``) with the ``ddsm`` policy, on the
torch width models (``export/torch_session.py``) or, with ``bundle``, on an exported bundle of the same pipeline
holding every width (``pocketdiff export`` of ``ddsm-train``'s output; onnxruntime is several times faster than
eager torch on small UNets): the search samples exactly as the app will. The decoder is skipped (a shape-only
stand-in): the proxy reads the final latents.

The GA: the population starts with every uniform schedule plus random ones; each generation keeps the
``elite`` best, and fills the rest with children of tournament-selected parents (per-step uniform crossover,
then per-step mutation to a neighbouring width). Scores are cached by schedule. The slimming stage's
evolution (``distill/evolution.py``) is a greedy walk over single block actions, not a population, so this
shares its building blocks (the resumable state file written atomically, the config hash, the plot style),
not its search loop. State is saved after every generation (``WORKDIR/state.json``); a rerun resumes.
Each generation is a row of ``WORKDIR/log.jsonl``; ``WORKDIR/search.png`` plots them and the front.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pocketdiff.architectures.slimmable_unet import as_ddsm_unet, build_width_model
from pocketdiff.benchmarks.flops import count_flops
from pocketdiff.distill.data import captioned_samples, check_data_source
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.components import UNetExport
from pocketdiff.export.roles import ROLES
from pocketdiff.export.torch_session import torch_runtime
from pocketdiff.loop import Interrupted, config_hash
from pocketdiff.pipedir import (StageRecord, atomic_output_file, inspect_pipeline, load_pipeline, read_history,
                                read_json, start_stage, write_pipeline)
from pocketdiff.runtime.policies import make_policy, width_role
from pocketdiff.runtime.sampler import VAE_DECODER, RuntimePipeline, check_generation_args
from pocketdiff.runtime.schedulers import get_scheduler_entry
from pocketdiff.runtime.sessions import ShapeSession

COSTS = ("macs", "latency")


@dataclass
class DDSMSearchConfig:
    scheduler: str = "ddim"  # the runtime sampler the schedule is for (runtime.schedulers.SCHEDULERS)
    steps: int = 25
    guidance: float = 7.5
    cost: str = "macs"  # "macs" (counted per width) or "latency" (latency_table: a `pocketdiff bench` JSON)
    latency_table: str = ""
    lam: float = 1.0  # fitness = proxy + lam * cost
    population: int = 24
    generations: int = 12
    elite: int = 4
    tournament: int = 3
    crossover: float = 0.9  # probability a child mixes two parents (else copies the first)
    mutation: float = 0.1  # per-step probability of moving to a neighbouring width
    n_prompts: int = 32
    data: str = "toyworld"
    bundle: str = ""  # score on this bundle's onnxruntime UNets (an export of the same pipeline, every width); "": torch
    seed: int = 0

    def validate(self) -> "DDSMSearchConfig":
        get_scheduler_entry(self.scheduler)
        check_generation_args(self.steps, self.guidance)
        if self.cost not in COSTS:
            raise choice_error("ddsm-search cost", self.cost, COSTS)
        if self.cost == "latency" and not Path(self.latency_table).is_file():
            raise PocketdiffError(f"cost 'latency' needs latency_table, a `pocketdiff bench` JSON of a bundle with "
                                  f"every width; got {self.latency_table!r}")
        if self.lam < 0:
            raise PocketdiffError(f"lam must be >= 0, got {self.lam}")
        if self.population < 2 or self.generations < 1 or not 0 <= self.elite < self.population \
                or self.tournament < 1 or self.n_prompts < 1:
            raise PocketdiffError(f"ddsm-search needs population >= 2, generations >= 1, 0 <= elite < population, "
                                  f"tournament >= 1, n_prompts >= 1; got {self.population}, {self.generations}, "
                                  f"{self.elite}, {self.tournament}, {self.n_prompts}")
        if not (0 <= self.crossover <= 1 and 0 <= self.mutation <= 1):
            raise PocketdiffError(f"crossover and mutation are probabilities; got {self.crossover}, {self.mutation}")
        check_data_source(self.data, "ddsm-search data source")
        if self.bundle and not (Path(self.bundle) / "manifest.json").is_file():
            raise PocketdiffError(f"bundle {self.bundle!r} is not a bundle folder (no manifest.json)")
        return self


def width_macs(unet, widths, batch: int) -> dict[float, int]:
    """MACs of one UNet call at ``batch`` for each width (counted on the meta device)."""
    out = {}
    for w in widths:
        model = build_width_model(unet, w, "meta")
        c, s = unet.config.in_channels, unet.config.sample_size
        with torch.device("meta"):
            args = (torch.zeros(batch, c, s, s), torch.tensor(500.0),
                    torch.zeros(batch, 77, unet.config.cross_attention_dim))
            extra = (torch.zeros(batch, unet.config.time_cond_proj_dim),) if unet.config.time_cond_proj_dim else ()
        out[float(w)] = count_flops(UNetExport(model), args + extra).macs
    return out


def width_latency(table: str, widths, batch: int) -> dict[float, float]:
    """Median ms per width at ``batch`` from a ``pocketdiff bench`` result of a bundle holding every width."""
    rows = {(r["component"], r["batch"]): r["median_ms"] for r in read_json(table)["components"]}
    out = {}
    for w in widths:
        key = (width_role(w), batch)
        if key not in rows:
            raise PocketdiffError(f"latency table {table} has no {key[0]} at batch {batch}: bench a bundle that holds "
                                  f"every width (pocketdiff bench --bundle ...)")
        out[float(w)] = float(rows[key])
    return out


def search_runtime(pipe, info, cfg: DDSMSearchConfig, widths) -> RuntimePipeline:
    """The runtime loop the search samples with: on the pipeline's torch modules, or (``cfg.bundle``) that
    bundle's onnxruntime sessions; the VAE decoder a shape-only stand-in (the proxy reads final latents)."""
    every = make_policy("ddsm", {"widths": list(widths)})  # names every width's role
    if cfg.bundle:
        rt = RuntimePipeline.from_bundle(cfg.bundle, "onnx", policy=every)
    else:
        sched_cfg = get_scheduler_entry(cfg.scheduler).config_for(info.scheduler_config)
        rt = torch_runtime(pipe, info.tokenizer_dir, sched_cfg, every,
                           roles=[r for r in ROLES if not ROLES[r].optional] + list(every.roles()))
    decoder = rt.sessions[VAE_DECODER]
    return rt.with_sessions({**rt.sessions, VAE_DECODER: ShapeSession(decoder.inputs, decoder.outputs)})


def final_latents(rt, prompts: list[str], widths: list[float], steps: int, guidance: float, scheduler: str
                  ) -> np.ndarray:
    """[N, C, h, w]: the runtime loop's latents after the last step, prompt i at seed i, with the ``ddsm``
    policy running ``widths`` (one per step)."""
    run = rt.with_sessions(rt.sessions, make_policy("ddsm", {"widths": [float(w) for w in widths]}))
    out = []
    for i, p in enumerate(prompts):
        last = {}
        run.generate(p, steps=steps, guidance=guidance, seed=i, truncate=True, scheduler=scheduler,
                     on_step=lambda k, x: last.__setitem__("x", x))
        out.append(last["x"][0])
    return np.stack(out)


class Scorer:
    """proxy, cost and fitness of schedules (tuples of width indices), cached in ``cache``."""

    def __init__(self, rt, prompts, widths, unit_cost: dict[float, float], cfg: DDSMSearchConfig, cache: dict):
        self.rt, self.prompts, self.widths, self.cfg, self.cache = rt, prompts, widths, cfg, cache
        self.unit = unit_cost
        full, smallest = (len(widths) - 1,) * cfg.steps, (0,) * cfg.steps
        self._done = {full: self._latents(full), smallest: self._latents(smallest)}  # both also in the population
        self.reference = self._done[full]
        self.scale = float(np.mean((self._done[smallest] - self.reference) ** 2)) or 1.0

    def _latents(self, sched) -> np.ndarray:
        if sched in getattr(self, "_done", {}):
            return self._done[sched]
        return final_latents(self.rt, self.prompts, [self.widths[i] for i in sched], self.cfg.steps, self.cfg.guidance,
                             self.cfg.scheduler)

    def cost(self, sched) -> float:
        return sum(self.unit[self.widths[i]] for i in sched) / (len(sched) * self.unit[self.widths[-1]])

    def score(self, sched) -> dict:
        key = ",".join(map(str, sched))
        if key not in self.cache:
            proxy = float(np.mean((self._latents(sched) - self.reference) ** 2)) / self.scale
            cost = self.cost(sched)
            self.cache[key] = {"proxy": proxy, "cost": cost, "fitness": proxy + self.cfg.lam * cost}
        return self.cache[key]


def next_population(scored: list[tuple[tuple, float]], n_widths: int, cfg: DDSMSearchConfig,
                    rng: np.random.Generator) -> list[tuple]:
    """Elites, then children (tournament parents, uniform crossover, neighbour mutation), all distinct."""
    ranked = [s for s, _ in sorted(scored, key=lambda sf: sf[1])]
    fitness = dict(scored)
    out = ranked[:cfg.elite]

    def pick():
        contenders = [ranked[i] for i in rng.integers(0, len(ranked), cfg.tournament)]
        return min(contenders, key=fitness.__getitem__)

    tries = 0
    while len(out) < cfg.population and tries < 50 * cfg.population:
        tries += 1
        a, b = np.array(pick()), np.array(pick())
        child = np.where(rng.random(len(a)) < 0.5, a, b) if rng.random() < cfg.crossover else a.copy()
        moves = rng.random(len(child)) < cfg.mutation
        child = np.clip(child + moves * rng.choice([-1, 1], len(child)), 0, n_widths - 1)
        child = tuple(int(x) for x in child)
        if child not in out:
            out.append(child)
    return out


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both cost and proxy, by cost."""
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (p["cost"], p["proxy"])):
        if p["proxy"] < best:
            front.append(p)
            best = p["proxy"]
    return front


def plot_search(history: list[dict], points: list[dict], uniform: list[dict], chosen: dict, path: Path,
                title: str) -> Path:
    """Left: best and mean fitness per generation. Right: every scored schedule, cost against proxy, with the
    front, the uniform widths and the chosen schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    g = [h["generation"] for h in history]
    a1.plot(g, [h["best_fitness"] for h in history], "-o", ms=3, label="best")
    a1.plot(g, [h["mean_fitness"] for h in history], "-", color="grey", label="population mean")
    a1.set_xlabel("generation")
    a1.set_ylabel("fitness = proxy + lam x cost")
    a1.legend()
    a2.scatter([p["cost"] for p in points], [p["proxy"] for p in points], s=8, color="#bbbbbb", label="scored")
    front = pareto_front(points)
    a2.plot([p["cost"] for p in front], [p["proxy"] for p in front], "-", color="#1f77b4", label="Pareto front")
    a2.plot([u["cost"] for u in uniform], [u["proxy"] for u in uniform], "s", color="#ff7f0e", label="uniform widths")
    for u in uniform:
        a2.annotate(f"{u['width']:g}", (u["cost"], u["proxy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    a2.plot([chosen["cost"]], [chosen["proxy"]], "*", ms=14, color="#d62728", label="chosen")
    a2.set_xlabel("UNet compute per image / full width")
    a2.set_ylabel("proxy (latent MSE to full / smallest uniform's)")
    a2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _save_state(path: Path, doc: dict) -> None:
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(doc) + "\n")


def ddsm_search(pipeline_dir: str | Path, out_dir: str | Path, cfg: DDSMSearchConfig, workdir: str | Path,
                stop_after: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Search ``pipeline_dir``'s DDSM UNet (``ddsm-train``'s output) for a width per step; write the pipeline
    with the schedule in its UNet config to ``out_dir``, and ``report.json``, ``log.jsonl`` and ``search.png``
    to ``workdir``. ``stop_after`` stops after that many generations of this invocation (tests)."""
    from tqdm import tqdm

    cfg.validate()
    workdir = start_stage(out_dir, workdir, overwrite)
    info = inspect_pipeline(pipeline_dir)
    pipe = load_pipeline(pipeline_dir)
    widths = tuple(float(w) for w in getattr(pipe.unet.config, "ddsm_widths", None) or ())
    if not widths:
        raise PocketdiffError(f"{pipeline_dir} has no DDSM UNet (its UNet config lists no ddsm_widths); run "
                              "ddsm-train first")
    batch = 2 if cfg.guidance > 1.0 and not pipe.unet.config.time_cond_proj_dim else 1
    unit = width_macs(pipe.unet, widths, batch) if cfg.cost == "macs" else width_latency(cfg.latency_table, widths,
                                                                                        batch)
    rt = search_runtime(pipe, info, cfg, widths)
    prompts = list(captioned_samples(cfg.data, cfg.n_prompts, cfg.seed + 7, "val").captions)
    state_file, log_file = workdir / "state.json", workdir / "log.jsonl"
    want = config_hash({**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve())})
    state = {"config_hash": want, "generation": 0, "population": None, "cache": {}, "history": []}
    if state_file.is_file():
        state = read_json(state_file)
        if state["config_hash"] != want:
            raise PocketdiffError(f"{workdir} holds a search of a different config ({state['config_hash']} != {want}); "
                                  "use a new work dir or delete it")
    scorer = Scorer(rt, prompts, widths, unit, cfg, state["cache"])
    n = len(widths)
    if state["population"] is None:
        rng = np.random.default_rng([cfg.seed, 0])
        pop = [(i,) * cfg.steps for i in range(n)]
        while len(pop) < cfg.population:
            cand = tuple(int(x) for x in rng.integers(0, n, cfg.steps))
            if cand not in pop:
                pop.append(cand)
        state["population"] = [list(p) for p in pop]
    bar = tqdm(total=cfg.generations, initial=state["generation"], desc="ddsm-search", disable=not progress)
    done_here = 0
    while state["generation"] < cfg.generations:
        pop = [tuple(p) for p in state["population"]]
        scored = [(p, scorer.score(p)["fitness"]) for p in pop]
        best = min(scored, key=lambda sf: sf[1])[0]
        row = {"generation": state["generation"] + 1, "best_fitness": scorer.score(best)["fitness"],
               "best_proxy": scorer.score(best)["proxy"], "best_cost": scorer.score(best)["cost"],
               "mean_fitness": float(np.mean([f for _, f in scored])), "scored": len(state["cache"]),
               "best_widths": [widths[i] for i in best]}
        state["history"].append(row)
        rng = np.random.default_rng([cfg.seed, state["generation"] + 1])
        state["population"] = [list(p) for p in next_population(scored, n, cfg, rng)]
        state["generation"] += 1
        _save_state(state_file, state)
        with atomic_output_file(log_file) as tmp:
            tmp.write_text("".join(json.dumps(h) + "\n" for h in state["history"]))
        bar.update(1)
        bar.set_postfix(fitness=f"{row['best_fitness']:.3f}", cost=f"{row['best_cost']:.3f}")
        done_here += 1
        if stop_after is not None and done_here >= stop_after and state["generation"] < cfg.generations:
            bar.close()
            raise Interrupted(f"ddsm-search: stopped after generation {state['generation']} (state saved)")
    bar.close()
    points = [{"widths": [widths[int(i)] for i in k.split(",")], **v} for k, v in state["cache"].items()]
    chosen = min(points, key=lambda p: p["fitness"])
    uniform = [{"width": w, **scorer.score((i,) * cfg.steps)} for i, w in enumerate(widths)]
    report = {"pipeline": str(Path(pipeline_dir).resolve()), "config": asdict(cfg), "widths": list(widths),
              "unit_cost": {str(w): c for w, c in unit.items()}, "cost_kind": cfg.cost, "step_batch": batch,
              "prompts": prompts, "chosen": chosen, "uniform": uniform, "front": pareto_front(points),
              "history": state["history"], "scored": len(points)}
    with atomic_output_file(workdir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    plot_search(state["history"], points, uniform, chosen, workdir / "search.png",
                f"ddsm-search: {cfg.scheduler}, {cfg.steps} steps, guidance {cfg.guidance:g}, lam {cfg.lam:g}")
    schedule = {"scheduler": cfg.scheduler, "steps": cfg.steps, "guidance": cfg.guidance, "widths": chosen["widths"]}
    from diffusers import StableDiffusionPipeline

    unet = as_ddsm_unet(pipe.unet, widths, schedule)
    out = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    summary = {k: chosen[k] for k in ("widths", "proxy", "cost", "fitness")}
    pins = {"steps": cfg.steps, "guidance": cfg.guidance, "scheduler": cfg.scheduler}
    record = StageRecord("ddsm-search", {**asdict(cfg), "pins": pins, "summary": summary})
    return write_pipeline(out, out_dir, [*read_history(pipeline_dir), record], overwrite=overwrite)
