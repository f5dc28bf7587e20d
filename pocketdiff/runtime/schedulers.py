"""Numpy schedulers that mirror diffusers': DDIM, Euler (discrete), DPM-Solver++(2M) and PNDM (PLMS).

Each is configured from a diffusers ``scheduler_config.json`` dict with ``from_config`` semantics
(keys the class does not take are ignored, missing keys take the diffusers class default), supports
``epsilon`` and ``v_prediction`` models, and follows the diffusers code expression by expression in
float32 so results agree to rounding. Options that change the maths and are not mirrored here
(Karras sigmas, thresholding, zero-SNR rescaling, ...) are refused with an error naming them.

API, made for a phone loop (no timestep look-ups, state is explicit)::

    s = SCHEDULERS["ddim"].create(config)     # or scheduler_from_config(config)
    s.set_timesteps(n)                          # s.timesteps: what to feed the UNet
    x = latents * s.init_noise_sigma
    for i, t in enumerate(s.timesteps):
        eps = unet(s.scale_model_input(x, i), t, ...)
        x = s.step(eps, i, x)

``SCHEDULERS`` is the one registry of sampler names: the CLI, the torch path (via
``diffusers_class`` and ``overrides``) and the pipeline validator all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pocketdiff.errors import PocketdiffError, choice_error

F32 = np.float32


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """Bit-exact ``torch.linspace(start, end, n, dtype=float32)`` (torch fuses multiply-add, halves from both ends)."""
    if n == 1:
        return np.array([start], dtype=F32)
    st, en = F32(start), F32(end)
    step = F32((en - st) / F32(n - 1))
    idx = np.arange(n, dtype=np.float64)
    lo = (np.float64(st) + np.float64(step) * idx).astype(F32)
    hi = (np.float64(en) - np.float64(step) * (n - 1 - idx)).astype(F32)
    return np.where(idx < n // 2, lo, hi)


def alphas_cumprod(config: dict) -> np.ndarray:
    """Float32 cumulative alpha products, bit-exact with diffusers' torch computation."""
    n, schedule = config["num_train_timesteps"], config["beta_schedule"]
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=F32)
    elif schedule == "linear":
        betas = _linspace_f32(config["beta_start"], config["beta_end"], n)
    elif schedule == "scaled_linear":
        betas = _linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    else:
        raise choice_error("beta_schedule", schedule, ["linear", "scaled_linear"])
    # torch.cumprod accumulates float32 in double on CPU.
    return np.cumprod((F32(1.0) - betas).astype(np.float64)).astype(F32)


def _check(value, allowed, what: str) -> None:
    if value not in allowed:
        raise choice_error(what, value, allowed)


class Scheduler:
    """Base: shared config handling. Subclasses set DEFAULTS (the diffusers ``__init__`` defaults)."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    # Options we refuse unless they hold their neutral value: {key: neutral value}.
    UNSUPPORTED: ClassVar[dict[str, Any]] = {}
    SPACINGS: ClassVar[tuple[str, ...]] = ("leading", "trailing", "linspace")

    def __init__(self, config: dict):
        if not isinstance(config, dict):
            raise PocketdiffError(f"scheduler config must be an object, got {type(config).__name__}")
        cfg = {k: config.get(k, v) for k, v in self.DEFAULTS.items()}
        _check_types(cfg, self.DEFAULTS)
        for key, neutral in self.UNSUPPORTED.items():
            if config.get(key) is not None and config[key] != neutral:
                raise PocketdiffError(
                    f"scheduler option {key}={config[key]!r} is not supported by the pocketdiff runtime "
                    f"({type(self).__name__}); allowed: {neutral!r}"
                )
        _check(cfg["prediction_type"], ("epsilon", "v_prediction"), "prediction_type")
        _check(cfg["timestep_spacing"], self.SPACINGS, "timestep_spacing")
        self.config = cfg
        self.alphas_cumprod = alphas_cumprod(cfg)
        a = float(self.alphas_cumprod[-1])  # sigma = sqrt((1 - a) / a): past MAX_SIGMA float32 steps overflow
        if not a > 1 / (1 + MAX_SIGMA ** 2):
            raise PocketdiffError(f"scheduler config leaves no signal: alphas_cumprod falls to {a:.3g} by timestep "
                                  f"{cfg['num_train_timesteps'] - 1} (sigma over {MAX_SIGMA:g}); shorten "
                                  "num_train_timesteps or lower beta_end")
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.num_inference_steps = 0

    @property
    def init_noise_sigma(self) -> np.float32:
        return F32(1.0)

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        return sample

    def _check_steps(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.config["num_train_timesteps"]:
            raise PocketdiffError(f"steps must be an integer in [1, {self.config['num_train_timesteps']}], got {n!r}")

    def _spaced(self, n: int, dtype=np.int64) -> np.ndarray:
        """The leading/trailing/linspace timestep grids shared by DDIM, Euler (dtype float32)."""
        T, spacing = self.config["num_train_timesteps"], self.config["timestep_spacing"]
        if spacing == "linspace":
            if dtype is F32:
                return np.linspace(0, T - 1, n, dtype=F32)[::-1].copy()
            return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        if spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(dtype)
            return ts + self.config["steps_offset"]
        ts = np.round(np.arange(T, 0, -T / n)).astype(dtype)
        return ts - 1


MAX_TRAIN_TIMESTEPS = 100_000
MAX_SIGMA = 1e6  # SD1.5's schedule ends at sigma 14.6


def _check_types(cfg: dict, defaults: dict) -> None:
    """Each value of the kind its default is (a bool for a bool, an integer for an integer, a finite number for a
    float, a string for a string), the schedule's numbers in range; else one error naming the key."""
    for key, default in defaults.items():
        v = cfg[key]
        kind = bool if isinstance(default, bool) else int if isinstance(default, int) else \
            float if isinstance(default, float) else str if isinstance(default, str) else None
        ok = (kind is None or (isinstance(v, bool) if kind is bool else
                               isinstance(v, int) and not isinstance(v, bool) if kind is int else
                               isinstance(v, (int, float)) and not isinstance(v, bool) and (np.isfinite(v) or v == default)
                               if kind is float else isinstance(v, str)))
        if not ok:
            raise PocketdiffError(f"scheduler option {key} must be {kind.__name__}, got {v!r}")
    n = cfg["num_train_timesteps"]
    if not 2 <= n <= MAX_TRAIN_TIMESTEPS:
        raise PocketdiffError(f"scheduler option num_train_timesteps must be in [2, {MAX_TRAIN_TIMESTEPS}], got {n}")
    if not 0 < cfg["beta_start"] < 1 or not 0 < cfg["beta_end"] < 1:
        raise PocketdiffError(f"scheduler options beta_start and beta_end must be in (0, 1), got {cfg['beta_start']}, "
                              f"{cfg['beta_end']}")
    if cfg["steps_offset"] < 0 or cfg["steps_offset"] >= n:
        raise PocketdiffError(f"scheduler option steps_offset must be in [0, {n}), got {cfg['steps_offset']}")
    betas = cfg["trained_betas"]
    if betas is not None and (not isinstance(betas, list) or len(betas) != n or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas)):
        raise PocketdiffError(f"scheduler option trained_betas must be null or {n} numbers in (0, 1)")


_BASE_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0,
}


class DDIM(Scheduler):
    """Mirrors ``diffusers.DDIMScheduler`` (eta = 0)."""

    DEFAULTS = {**_BASE_DEFAULTS, "clip_sample": True, "set_alpha_to_one": True, "clip_sample_range": 1.0,
                "timestep_spacing": "leading"}
    UNSUPPORTED = {"thresholding": False, "rescale_betas_zero_snr": False}

    def __init__(self, config: dict):
        super().__init__(config)
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        self.num_inference_steps = n
        self.timesteps = self._spaced(n)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        t = int(self.timesteps[step_index])
        prev_t = t - self.config["num_train_timesteps"] // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = F32(1) - a_t
        if self.config["prediction_type"] == "epsilon":
            x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
            eps = model_output
        else:
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
            eps = np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample
        if self.config["clip_sample"]:
            r = F32(self.config["clip_sample_range"])
            x0 = np.clip(x0, -r, r)
        direction = np.sqrt(F32(1) - a_prev) * eps
        return (np.sqrt(a_prev) * x0 + direction).astype(F32)


class EulerDiscrete(Scheduler):
    """Mirrors ``diffusers.EulerDiscreteScheduler`` (s_churn = 0, linear sigma interpolation)."""

    DEFAULTS = {**_BASE_DEFAULTS, "timestep_spacing": "linspace", "final_sigmas_type": "zero",
                "interpolation_type": "linear"}
    UNSUPPORTED = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                   "rescale_betas_zero_snr": False, "timestep_type": "discrete", "sigma_min": None, "sigma_max": None}

    def __init__(self, config: dict):
        super().__init__(config)
        _check(self.config["interpolation_type"], ("linear",), "interpolation_type")
        _check(self.config["final_sigmas_type"], ("zero", "sigma_min"), "final_sigmas_type")
        ac = self.alphas_cumprod
        self._train_sigmas = np.sqrt((F32(1) - ac) / ac)
        self.sigmas = np.concatenate([self._train_sigmas[::-1], [F32(0)]]).astype(F32)

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        self.num_inference_steps = n
        ts = self._spaced(n, dtype=F32)
        sig = np.interp(ts, np.arange(0, len(self._train_sigmas)), self._train_sigmas)
        if self.config["final_sigmas_type"] == "sigma_min":
            last = np.sqrt((F32(1) - self.alphas_cumprod[0]) / self.alphas_cumprod[0])
        else:
            last = 0
        self.sigmas = np.concatenate([sig, [last]]).astype(F32)
        self.timesteps = ts.astype(F32)

    @property
    def init_noise_sigma(self) -> np.float32:
        max_sigma = self.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return F32(max_sigma)
        return F32(np.sqrt(max_sigma * max_sigma + F32(1)))

    def scale_model_input(self, sample: np.ndarray, step_index: int) -> np.ndarray:
        sigma = self.sigmas[step_index]
        return (sample / (np.sqrt((sigma * sigma) + F32(1)))).astype(F32)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        sigma = self.sigmas[step_index]
        sigma_hat = sigma * F32(1.0)
        if self.config["prediction_type"] == "epsilon":
            x0 = sample - sigma_hat * model_output
        else:
            x0 = model_output * (-sigma / np.sqrt((sigma * sigma) + F32(1))) + (sample / ((sigma * sigma) + F32(1)))
        derivative = (sample - x0) / sigma_hat
        dt = self.sigmas[step_index + 1] - sigma_hat
        return (sample + derivative * dt).astype(F32)


class DPMSolverPP2M(Scheduler):
    """Mirrors ``diffusers.DPMSolverMultistepScheduler`` with ``algorithm_type='dpmsolver++'``, order <= 2."""

    DEFAULTS = {**_BASE_DEFAULTS, "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "lower_order_final": True, "euler_at_final": False, "final_sigmas_type": "zero",
                "lambda_min_clipped": -float("inf"), "timestep_spacing": "linspace"}
    UNSUPPORTED = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                   "use_lu_lambdas": False, "use_flow_sigmas": False, "thresholding": False,
                   "rescale_betas_zero_snr": False, "variance_type": None, "use_dynamic_shifting": False}

    def __init__(self, config: dict):
        super().__init__(config)
        _check(self.config["algorithm_type"], ("dpmsolver++",), "algorithm_type")
        _check(self.config["solver_order"], (1, 2), "solver_order")
        _check(self.config["solver_type"], ("midpoint", "heun"), "solver_type")
        _check(self.config["final_sigmas_type"], ("zero", "sigma_min"), "final_sigmas_type")
        ac = self.alphas_cumprod
        self._train_sigmas = np.sqrt((F32(1) - ac) / ac)
        self._lambda_t = np.log(np.sqrt(ac)) - np.log(np.sqrt(F32(1) - ac))
        self.sigmas = self._train_sigmas
        self._outputs: list[np.ndarray | None] = []
        self._lower_order_nums = 0

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        T = self.config["num_train_timesteps"]
        clipped_idx = int(np.searchsorted(self._lambda_t[::-1], self.config["lambda_min_clipped"]))
        last = T - clipped_idx
        spacing = self.config["timestep_spacing"]
        if spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = last // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + self.config["steps_offset"]
        else:
            ts = np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1
        sig = np.interp(ts, np.arange(0, len(self._train_sigmas)), self._train_sigmas)
        if self.config["final_sigmas_type"] == "sigma_min":
            final = np.sqrt((F32(1) - self.alphas_cumprod[0]) / self.alphas_cumprod[0])
        else:
            final = 0
        self.sigmas = np.concatenate([sig, [final]]).astype(F32)
        self.timesteps = ts
        self.num_inference_steps = len(ts)
        self._outputs = [None] * self.config["solver_order"]
        self._lower_order_nums = 0

    @staticmethod
    def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
        alpha = F32(1) / (np.sqrt((sigma * sigma) + F32(1)))
        return alpha, sigma * alpha

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        cfg, n = self.config, len(self.timesteps)
        lower_final = step_index == n - 1 and (
            cfg["euler_at_final"] or (cfg["lower_order_final"] and n < 15) or cfg["final_sigmas_type"] == "zero"
        )
        # (diffusers' `lower_order_second` flag only matters for third-order solvers, which we refuse.)
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[step_index])
        if cfg["prediction_type"] == "epsilon":
            x0 = (sample - sigma_s0 * model_output) / alpha_s0
        else:
            x0 = alpha_s0 * sample - sigma_s0 * model_output
        self._outputs = self._outputs[1:] + [x0]
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[step_index + 1])
        with np.errstate(divide="ignore"):  # sigma_t = 0 at the last step, as in diffusers
            lambda_t = np.log(alpha_t) - np.log(sigma_t)
        lambda_s0 = np.log(alpha_s0) - np.log(sigma_s0)
        h = lambda_t - lambda_s0
        if cfg["solver_order"] == 1 or self._lower_order_nums < 1 or lower_final:
            out = (sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - F32(1.0))) * x0
        else:
            alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[step_index - 1])
            lambda_s1 = np.log(alpha_s1) - np.log(sigma_s1)
            m0, m1 = self._outputs[-1], self._outputs[-2]
            r0 = (lambda_s0 - lambda_s1) / h
            d0, d1 = m0, (F32(1.0) / r0) * (m0 - m1)
            if cfg["solver_type"] == "midpoint":
                out = ((sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - F32(1.0))) * d0
                       - F32(0.5) * (alpha_t * (np.exp(-h) - F32(1.0))) * d1)
            else:
                out = ((sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - F32(1.0))) * d0
                       + (alpha_t * ((np.exp(-h) - F32(1.0)) / h + F32(1.0))) * d1)
        if self._lower_order_nums < cfg["solver_order"]:
            self._lower_order_nums += 1
        return np.asarray(out, dtype=F32)


class PNDM(Scheduler):
    """Mirrors ``diffusers.PNDMScheduler`` with ``skip_prk_steps=True`` (PLMS), SD's default sampler."""

    DEFAULTS = {**_BASE_DEFAULTS, "skip_prk_steps": False, "set_alpha_to_one": False, "timestep_spacing": "leading"}

    def __init__(self, config: dict):
        super().__init__(config)
        if not self.config["skip_prk_steps"]:
            raise PocketdiffError(
                "scheduler option skip_prk_steps=False (Runge-Kutta warm-up) is not supported by the pocketdiff "
                "runtime; allowed: True (PLMS, as Stable Diffusion ships)"
            )
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self._ets: list[np.ndarray] = []
        self._counter = 0
        self._cur_sample: np.ndarray | None = None

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        self.num_inference_steps = n
        T, spacing = self.config["num_train_timesteps"], self.config["timestep_spacing"]
        if spacing == "linspace":
            base = np.linspace(0, T - 1, n).round().astype(np.int64)
        elif spacing == "leading":
            base = (np.arange(0, n) * (T // n)).round() + self.config["steps_offset"]
        else:
            base = np.round(np.arange(T, 0, -T / n))[::-1].astype(np.int64) - 1
        # PLMS runs one extra step: the second-to-last timestep appears twice.
        self.timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy().astype(np.int64)
        self._ets, self._counter, self._cur_sample = [], 0, None

    def _prev_sample(self, sample, t, prev_t, eps):
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = F32(1) - a_t, F32(1) - a_prev
        if self.config["prediction_type"] == "v_prediction":
            eps = np.sqrt(a_t) * eps + np.sqrt(b_t) * sample
        coeff = np.sqrt(a_prev / a_t)
        denom = a_t * np.sqrt(b_prev) + np.sqrt(a_t * b_t * a_prev)
        return (coeff * sample - (a_prev - a_t) * eps / denom).astype(F32)

    def step(self, model_output: np.ndarray, step_index: int, sample: np.ndarray) -> np.ndarray:
        t = int(self.timesteps[step_index])
        stride = self.config["num_train_timesteps"] // self.num_inference_steps
        prev_t = t - stride
        if self._counter != 1:
            self._ets = self._ets[-3:] + [model_output]
        else:
            prev_t, t = t, t + stride
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            eps = model_output
            self._cur_sample = sample
        elif len(ets) == 1 and self._counter == 1:
            eps = (model_output + ets[-1]) / F32(2)
            sample, self._cur_sample = self._cur_sample, None
        elif len(ets) == 2:
            eps = (F32(3) * ets[-1] - ets[-2]) / F32(2)
        elif len(ets) == 3:
            eps = (F32(23) * ets[-1] - F32(16) * ets[-2] + F32(5) * ets[-3]) / F32(12)
        else:
            eps = F32(1 / 24) * (F32(55) * ets[-1] - F32(59) * ets[-2] + F32(37) * ets[-3] - F32(9) * ets[-4])
        self._counter += 1
        return self._prev_sample(sample, t, prev_t, eps)


@dataclass(frozen=True)
class SchedulerEntry:
    """One sampler name: the runtime class, the diffusers class it mirrors, and forced config values."""

    runtime_class: type[Scheduler]
    diffusers_class: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def config_for(self, config: dict) -> dict:
        """``config`` (any diffusers scheduler's) as this scheduler's config: overrides applied and
        ``_class_name`` set, so the result names the scheduler it configures."""
        return {**config, **self.overrides, "_class_name": self.diffusers_class}

    def create(self, config: dict) -> Scheduler:
        return self.runtime_class(self.config_for(config))


SCHEDULERS: dict[str, SchedulerEntry] = {
    "ddim": SchedulerEntry(DDIM, "DDIMScheduler"),
    "euler": SchedulerEntry(EulerDiscrete, "EulerDiscreteScheduler"),
    "dpm++2m": SchedulerEntry(DPMSolverPP2M, "DPMSolverMultistepScheduler",
                              {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "pndm": SchedulerEntry(PNDM, "PNDMScheduler", {"skip_prk_steps": True}),
}


def scheduler_name_for(config: dict) -> str:
    """Registry name of a saved scheduler config (its ``_class_name``); error if we do not mirror it."""
    if not isinstance(config, dict):
        raise PocketdiffError(f"scheduler config must be an object, got {type(config).__name__}")
    cls = config.get("_class_name")
    for name, entry in SCHEDULERS.items():
        if entry.diffusers_class == cls:
            return name
    raise choice_error("scheduler class", cls, [e.diffusers_class for e in SCHEDULERS.values()])


def get_scheduler_entry(name: str) -> SchedulerEntry:
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise choice_error("scheduler", name, SCHEDULERS)
    return SCHEDULERS[name]


def scheduler_from_config(config: dict, name: str | None = None) -> Scheduler:
    """Runtime scheduler for ``name`` (default: the config's own class) built from a diffusers config dict."""
    if not isinstance(config, dict):
        raise PocketdiffError(f"scheduler config must be an object, got {type(config).__name__}")
    return get_scheduler_entry(name or scheduler_name_for(config)).create(config)
