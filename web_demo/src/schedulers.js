// Mirrors pocketdiff/runtime/schedulers.py: DDIM, EulerDiscrete, DPM-Solver++(2M), PNDM (PLMS), configured from a
// diffusers scheduler_config.json with from_config semantics, float32 expression by expression (Math.fround after
// every operation, as numpy computes on float32 arrays and scalars). Samples are Float32Arrays (any shape: the
// maths is elementwise); step_index-based API, explicit state, as in the Python file.

import { PocketdiffError, choiceError, formatG, pyEq, repr, typeName } from './errors.js';

const f = Math.fround;
const sqrt = (x) => f(Math.sqrt(x));
const log = (x) => f(Math.log(x));
const exp = (x) => f(Math.exp(x));
const map = (a, fn) => { const o = new Float32Array(a.length); for (let i = 0; i < a.length; i++) o[i] = fn(a[i], i); return o; };

/** numpy's round (half to even). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** np.arange(start, stop, step) for floats: length ceil((stop - start) / step), values start + i * delta. */
function arangeF(start, stop, step) {
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const delta = start + step - start;
  return Array.from({ length: n }, (_, i) => (i === 0 ? start : start + i * delta));
}

/** np.linspace(start, stop, n) in float64. */
function linspace(start, stop, n) {
  if (n === 1) return [start];
  const step = (stop - start) / (n - 1);
  return Array.from({ length: n }, (_, i) => (i === n - 1 ? stop : i * step + start));
}

/** np.interp(x, [0, 1, ..., len-1], fp) in float64. */
function interp(xs, fp) {
  const last = fp.length - 1;
  return xs.map((x) => {
    if (x >= last) return fp[last];
    if (x < 0) return fp[0];
    const j = Math.floor(x);
    if (j === x) return fp[j];
    const slope = (fp[j + 1] - fp[j]) / 1;
    const r = slope * (x - j) + fp[j];
    return Number.isNaN(r) ? slope * (x - (j + 1)) + fp[j + 1] : r;
  });
}

/** Bit-exact torch.linspace(start, end, n, dtype=float32) (halves from both ends). */
function linspaceF32(start, end, n) {
  if (n === 1) return new Float32Array([start]);
  const st = f(start), en = f(end);
  const step = f(f(en - st) / f(n - 1));
  const half = Math.floor(n / 2);
  return map(new Float32Array(n), (_, i) => (i < half ? f(st + step * i) : f(en - step * (n - 1 - i))));
}

/** Float32 cumulative alpha products, as diffusers' torch computation. */
export function alphasCumprod(config) {
  const n = config.num_train_timesteps, schedule = config.beta_schedule;
  let betas;
  if (config.trained_betas !== null && config.trained_betas !== undefined) betas = Float32Array.from(config.trained_betas);
  else if (schedule === 'linear') betas = linspaceF32(config.beta_start, config.beta_end, n);
  else if (schedule === 'scaled_linear') {
    betas = map(linspaceF32(config.beta_start ** 0.5, config.beta_end ** 0.5, n), (b) => f(b * b));
  } else throw choiceError('beta_schedule', schedule, ['linear', 'scaled_linear']);
  let acc = 1;
  return map(betas, (b) => f((acc *= f(1 - b))));
}

function check(value, allowed, what) {
  if (!allowed.some((a) => pyEq(a, value))) throw choiceError(what, value, allowed);
}

export const MAX_TRAIN_TIMESTEPS = 100000;
export const MAX_SIGMA = 1e6;
// key -> [kind, default]: the diffusers __init__ defaults, with their Python types (JS cannot tell 1.0 from 1).
const BASE_DEFAULTS = {
  num_train_timesteps: ['int', 1000], beta_start: ['float', 0.0001], beta_end: ['float', 0.02],
  beta_schedule: ['str', 'linear'], trained_betas: [null, null], prediction_type: ['str', 'epsilon'],
  steps_offset: ['int', 0],
};

function checkTypes(cfg, defaults) {
  for (const [key, [kind, def]] of Object.entries(defaults)) {
    const v = cfg[key];
    const ok = kind === null || (kind === 'bool' ? typeof v === 'boolean'
      : kind === 'int' ? Number.isInteger(v)
        : kind === 'float' ? typeof v === 'number' && (Number.isFinite(v) || v === def) : typeof v === 'string');
    if (!ok) throw new PocketdiffError(`scheduler option ${key} must be ${kind}, got ${repr(v)}`);
  }
  const n = cfg.num_train_timesteps;
  if (!(n >= 2 && n <= MAX_TRAIN_TIMESTEPS)) {
    throw new PocketdiffError(`scheduler option num_train_timesteps must be in [2, ${MAX_TRAIN_TIMESTEPS}], got ${n}`);
  }
  if (!(cfg.beta_start > 0 && cfg.beta_start < 1) || !(cfg.beta_end > 0 && cfg.beta_end < 1)) {
    throw new PocketdiffError('scheduler options beta_start and beta_end must be in (0, 1), got ' +
      `${repr(cfg.beta_start)}, ${repr(cfg.beta_end)}`);
  }
  if (cfg.steps_offset < 0 || cfg.steps_offset >= n) {
    throw new PocketdiffError(`scheduler option steps_offset must be in [0, ${n}), got ${cfg.steps_offset}`);
  }
  const betas = cfg.trained_betas;
  if (betas !== null && (!Array.isArray(betas) || betas.length !== n ||
    !betas.every((b) => typeof b === 'number' && b > 0 && b < 1))) {
    throw new PocketdiffError(`scheduler option trained_betas must be null or ${n} numbers in (0, 1)`);
  }
}

export class Scheduler {
  static DEFAULTS = {};
  static UNSUPPORTED = {};
  static SPACINGS = ['leading', 'trailing', 'linspace'];

  constructor(config) {
    const cls = this.constructor;
    if (config === null || typeof config !== 'object' || Array.isArray(config)) {
      throw new PocketdiffError(`scheduler config must be an object, got ${typeName(config)}`);
    }
    const cfg = {};
    for (const [k, [, v]] of Object.entries(cls.DEFAULTS)) cfg[k] = Object.hasOwn(config, k) ? config[k] : v;
    checkTypes(cfg, cls.DEFAULTS);
    for (const [key, neutral] of Object.entries(cls.UNSUPPORTED)) {
      if (config[key] !== null && config[key] !== undefined && !pyEq(config[key], neutral)) {
        throw new PocketdiffError(`scheduler option ${key}=${repr(config[key])} is not supported by the pocketdiff ` +
          `runtime (${cls.pyName}); allowed: ${repr(neutral)}`);
      }
    }
    check(cfg.prediction_type, ['epsilon', 'v_prediction'], 'prediction_type');
    check(cfg.timestep_spacing, cls.SPACINGS, 'timestep_spacing');
    this.config = cfg;
    this.alphasCumprod = alphasCumprod(cfg);
    const a = this.alphasCumprod[this.alphasCumprod.length - 1];
    if (!(a > 1 / (1 + MAX_SIGMA ** 2))) {
      throw new PocketdiffError(`scheduler config leaves no signal: alphas_cumprod falls to ${formatG(a, 3)} by ` +
        `timestep ${cfg.num_train_timesteps - 1} (sigma over ${formatG(MAX_SIGMA)}); shorten num_train_timesteps ` +
        'or lower beta_end');
    }
    this.timesteps = [];
    this.numInferenceSteps = 0;
  }

  get initNoiseSigma() { return 1; }

  scaleModelInput(sample, stepIndex) { return sample; }

  checkSteps(n) {
    const T = this.config.num_train_timesteps;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > T) {
      throw new PocketdiffError(`steps must be an integer in [1, ${T}], got ${repr(n)}`);
    }
  }

  /** The leading/trailing/linspace grids shared by DDIM, Euler (f32: Euler's float32 timesteps). */
  spaced(n, f32 = false) {
    const T = this.config.num_train_timesteps, spacing = this.config.timestep_spacing;
    if (spacing === 'linspace') {
      return f32 ? linspace(0, T - 1, n).map(f).reverse() : linspace(0, T - 1, n).map(roundHalfEven).reverse();
    }
    if (spacing === 'leading') {
      const step = Math.floor(T / n);
      return Array.from({ length: n }, (_, i) => i * step).reverse().map((t) => t + this.config.steps_offset);
    }
    return arangeF(T, 0, -T / n).map((t) => roundHalfEven(t) - 1);
  }
}

const DEF = (kind, v) => [kind, v];

export class DDIM extends Scheduler {
  static pyName = 'DDIM';
  static DEFAULTS = { ...BASE_DEFAULTS, clip_sample: DEF('bool', true), set_alpha_to_one: DEF('bool', true),
    clip_sample_range: DEF('float', 1.0), timestep_spacing: DEF('str', 'leading') };
  static UNSUPPORTED = { thresholding: false, rescale_betas_zero_snr: false };

  constructor(config) {
    super(config);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
  }

  setTimesteps(n) {
    this.checkSteps(n);
    this.numInferenceSteps = n;
    this.timesteps = this.spaced(n);
  }

  step(modelOutput, stepIndex, sample) {
    const t = this.timesteps[stepIndex];
    const prevT = t - Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
    const aT = this.alphasCumprod[t];
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const bT = f(1 - aT), sa = sqrt(aT), sb = sqrt(bT);
    const eps = this.config.prediction_type === 'epsilon';
    const r = f(this.config.clip_sample_range), clip = this.config.clip_sample;
    const sPrev = sqrt(aPrev), dPrev = sqrt(f(1 - aPrev));
    return map(sample, (s, i) => {
      const m = modelOutput[i];
      let x0 = eps ? f(f(s - f(sb * m)) / sa) : f(f(sa * s) - f(sb * m));
      const e = eps ? m : f(f(sa * m) + f(sb * s));
      if (clip) x0 = Math.min(Math.max(x0, -r), r);
      return f(f(sPrev * x0) + f(dPrev * e));
    });
  }
}

export class EulerDiscrete extends Scheduler {
  static pyName = 'EulerDiscrete';
  static DEFAULTS = { ...BASE_DEFAULTS, timestep_spacing: DEF('str', 'linspace'), final_sigmas_type: DEF('str', 'zero'),
    interpolation_type: DEF('str', 'linear') };
  static UNSUPPORTED = { use_karras_sigmas: false, use_exponential_sigmas: false, use_beta_sigmas: false,
    rescale_betas_zero_snr: false, timestep_type: 'discrete', sigma_min: null, sigma_max: null };

  constructor(config) {
    super(config);
    check(this.config.interpolation_type, ['linear'], 'interpolation_type');
    check(this.config.final_sigmas_type, ['zero', 'sigma_min'], 'final_sigmas_type');
    this.trainSigmas = map(this.alphasCumprod, (a) => sqrt(f(f(1 - a) / a)));
    this.sigmas = Float32Array.from([...Array.from(this.trainSigmas).reverse(), 0]);
  }

  setTimesteps(n) {
    this.checkSteps(n);
    this.numInferenceSteps = n;
    const ts = this.spaced(n, true).map(f);
    const sig = interp(ts, this.trainSigmas);
    const a0 = this.alphasCumprod[0];
    const last = this.config.final_sigmas_type === 'sigma_min' ? sqrt(f(f(1 - a0) / a0)) : 0;
    this.sigmas = Float32Array.from([...sig, last]);
    this.timesteps = ts;
  }

  get initNoiseSigma() {
    const max = this.sigmas.reduce((a, b) => Math.max(a, b), -Infinity);
    if (['linspace', 'trailing'].includes(this.config.timestep_spacing)) return max;
    return sqrt(f(f(max * max) + 1));
  }

  scaleModelInput(sample, stepIndex) {
    const sigma = this.sigmas[stepIndex];
    const d = sqrt(f(f(sigma * sigma) + 1));
    return map(sample, (s) => f(s / d));
  }

  step(modelOutput, stepIndex, sample) {
    const sigma = this.sigmas[stepIndex], sigmaHat = sigma;
    const eps = this.config.prediction_type === 'epsilon';
    const c = f(-sigma / sqrt(f(f(sigma * sigma) + 1))), d = f(f(sigma * sigma) + 1);
    const dt = f(this.sigmas[stepIndex + 1] - sigmaHat);
    return map(sample, (s, i) => {
      const m = modelOutput[i];
      const x0 = eps ? f(s - f(sigmaHat * m)) : f(f(m * c) + f(s / d));
      const derivative = f(f(s - x0) / sigmaHat);
      return f(s + f(derivative * dt));
    });
  }
}

function alphaSigma(sigma) {
  const alpha = f(1 / sqrt(f(f(sigma * sigma) + 1)));
  return [alpha, f(sigma * alpha)];
}

export class DPMSolverPP2M extends Scheduler {
  static pyName = 'DPMSolverPP2M';
  static DEFAULTS = { ...BASE_DEFAULTS, solver_order: DEF('int', 2), algorithm_type: DEF('str', 'dpmsolver++'),
    solver_type: DEF('str', 'midpoint'), lower_order_final: DEF('bool', true), euler_at_final: DEF('bool', false),
    final_sigmas_type: DEF('str', 'zero'), lambda_min_clipped: DEF('float', -Infinity),
    timestep_spacing: DEF('str', 'linspace') };
  static UNSUPPORTED = { use_karras_sigmas: false, use_exponential_sigmas: false, use_beta_sigmas: false,
    use_lu_lambdas: false, use_flow_sigmas: false, thresholding: false, rescale_betas_zero_snr: false,
    variance_type: null, use_dynamic_shifting: false };

  constructor(config) {
    super(config);
    check(this.config.algorithm_type, ['dpmsolver++'], 'algorithm_type');
    check(this.config.solver_order, [1, 2], 'solver_order');
    check(this.config.solver_type, ['midpoint', 'heun'], 'solver_type');
    check(this.config.final_sigmas_type, ['zero', 'sigma_min'], 'final_sigmas_type');
    const ac = this.alphasCumprod;
    this.trainSigmas = map(ac, (a) => sqrt(f(f(1 - a) / a)));
    this.lambdaT = map(ac, (a) => f(log(sqrt(a)) - log(sqrt(f(1 - a)))));
    this.sigmas = this.trainSigmas;
    this.outputs = [];
    this.lowerOrderNums = 0;
  }

  setTimesteps(n) {
    this.checkSteps(n);
    const T = this.config.num_train_timesteps;
    const rev = Array.from(this.lambdaT).reverse();
    let clippedIdx = rev.findIndex((v) => v >= this.config.lambda_min_clipped); // np.searchsorted (left)
    if (clippedIdx < 0) clippedIdx = rev.length;
    const last = T - clippedIdx;
    const spacing = this.config.timestep_spacing;
    let ts;
    if (spacing === 'linspace') ts = linspace(0, last - 1, n + 1).map(roundHalfEven).reverse().slice(0, -1);
    else if (spacing === 'leading') {
      const ratio = Math.floor(last / (n + 1));
      ts = Array.from({ length: n + 1 }, (_, i) => i * ratio).reverse().slice(0, -1)
        .map((t) => t + this.config.steps_offset);
    } else ts = arangeF(last, 0, -T / n).map((t) => roundHalfEven(t) - 1);
    const sig = interp(ts, this.trainSigmas);
    const a0 = this.alphasCumprod[0];
    const final = this.config.final_sigmas_type === 'sigma_min' ? sqrt(f(f(1 - a0) / a0)) : 0;
    this.sigmas = Float32Array.from([...sig, final]);
    this.timesteps = ts;
    this.numInferenceSteps = ts.length;
    this.outputs = new Array(this.config.solver_order).fill(null);
    this.lowerOrderNums = 0;
  }

  step(modelOutput, stepIndex, sample) {
    const cfg = this.config, n = this.timesteps.length;
    const lowerFinal = stepIndex === n - 1 &&
      (cfg.euler_at_final || (cfg.lower_order_final && n < 15) || cfg.final_sigmas_type === 'zero');
    const [alphaS0, sigmaS0] = alphaSigma(this.sigmas[stepIndex]);
    const x0 = cfg.prediction_type === 'epsilon'
      ? map(sample, (s, i) => f(f(s - f(sigmaS0 * modelOutput[i])) / alphaS0))
      : map(sample, (s, i) => f(f(alphaS0 * s) - f(sigmaS0 * modelOutput[i])));
    this.outputs = [...this.outputs.slice(1), x0];
    const [alphaT, sigmaT] = alphaSigma(this.sigmas[stepIndex + 1]);
    const lambdaT = f(log(alphaT) - log(sigmaT));
    const lambdaS0 = f(log(alphaS0) - log(sigmaS0));
    const h = f(lambdaT - lambdaS0);
    const ratio = f(sigmaT / sigmaS0), A = f(alphaT * f(exp(-h) - 1));
    let out;
    if (cfg.solver_order === 1 || this.lowerOrderNums < 1 || lowerFinal) {
      out = map(sample, (s, i) => f(f(ratio * s) - f(A * x0[i])));
    } else {
      const [alphaS1, sigmaS1] = alphaSigma(this.sigmas[stepIndex - 1]);
      const lambdaS1 = f(log(alphaS1) - log(sigmaS1));
      const m0 = this.outputs[this.outputs.length - 1], m1 = this.outputs[this.outputs.length - 2];
      const r0 = f(f(lambdaS0 - lambdaS1) / h), inv = f(1 / r0);
      const d1 = map(m0, (v, i) => f(inv * f(v - m1[i])));
      if (cfg.solver_type === 'midpoint') {
        const half = f(0.5 * A);
        out = map(sample, (s, i) => f(f(f(ratio * s) - f(A * m0[i])) - f(half * d1[i])));
      } else {
        const c = f(alphaT * f(f(f(exp(-h) - 1) / h) + 1));
        out = map(sample, (s, i) => f(f(f(ratio * s) - f(A * m0[i])) + f(c * d1[i])));
      }
    }
    if (this.lowerOrderNums < cfg.solver_order) this.lowerOrderNums += 1;
    return out;
  }
}

export class PNDM extends Scheduler {
  static pyName = 'PNDM';
  static DEFAULTS = { ...BASE_DEFAULTS, skip_prk_steps: DEF('bool', false), set_alpha_to_one: DEF('bool', false),
    timestep_spacing: DEF('str', 'leading') };

  constructor(config) {
    super(config);
    if (!this.config.skip_prk_steps) {
      throw new PocketdiffError('scheduler option skip_prk_steps=False (Runge-Kutta warm-up) is not supported by the ' +
        'pocketdiff runtime; allowed: True (PLMS, as Stable Diffusion ships)');
    }
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    this.ets = [];
    this.counter = 0;
    this.curSample = null;
  }

  setTimesteps(n) {
    this.checkSteps(n);
    this.numInferenceSteps = n;
    const T = this.config.num_train_timesteps, spacing = this.config.timestep_spacing;
    let base;
    if (spacing === 'linspace') base = linspace(0, T - 1, n).map(roundHalfEven);
    else if (spacing === 'leading') {
      base = Array.from({ length: n }, (_, i) => i * Math.floor(T / n) + this.config.steps_offset);
    } else base = arangeF(T, 0, -T / n).map(roundHalfEven).reverse().map((t) => t - 1);
    // PLMS runs one extra step: the second-to-last timestep appears twice.
    this.timesteps = [...base.slice(0, -1), ...base.slice(-2, -1), ...base.slice(-1)].reverse();
    this.ets = [];
    this.counter = 0;
    this.curSample = null;
  }

  prevSample(sample, t, prevT, eps) {
    const aT = this.alphasCumprod[t];
    const aPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const bT = f(1 - aT), bPrev = f(1 - aPrev);
    if (this.config.prediction_type === 'v_prediction') {
      const sa = sqrt(aT), sb = sqrt(bT);
      eps = map(eps, (e, i) => f(f(sa * e) + f(sb * sample[i])));
    }
    const coeff = sqrt(f(aPrev / aT));
    const denom = f(f(aT * sqrt(bPrev)) + sqrt(f(f(aT * bT) * aPrev)));
    const diff = f(aPrev - aT);
    return map(sample, (s, i) => f(f(coeff * s) - f(f(diff * eps[i]) / denom)));
  }

  step(modelOutput, stepIndex, sample) {
    let t = this.timesteps[stepIndex];
    const stride = Math.floor(this.config.num_train_timesteps / this.numInferenceSteps);
    let prevT = t - stride;
    if (this.counter !== 1) this.ets = [...this.ets.slice(-3), modelOutput];
    else [prevT, t] = [t, t + stride];
    const ets = this.ets, e = (k) => ets[ets.length - k];
    let eps;
    if (ets.length === 1 && this.counter === 0) {
      eps = modelOutput;
      this.curSample = sample;
    } else if (ets.length === 1 && this.counter === 1) {
      eps = map(modelOutput, (m, i) => f(f(m + e(1)[i]) / 2));
      [sample, this.curSample] = [this.curSample, null];
    } else if (ets.length === 2) {
      eps = map(e(1), (v, i) => f(f(f(3 * v) - e(2)[i]) / 2));
    } else if (ets.length === 3) {
      eps = map(e(1), (v, i) => f(f(f(f(23 * v) - f(16 * e(2)[i])) + f(5 * e(3)[i])) / 12));
    } else {
      const c = f(1 / 24);
      eps = map(e(1), (v, i) => f(c * f(f(f(f(55 * v) - f(59 * e(2)[i])) + f(37 * e(3)[i])) - f(9 * e(4)[i]))));
    }
    this.counter += 1;
    return this.prevSample(sample, t, prevT, eps);
  }
}

/** One sampler name: the runtime class, the diffusers class it mirrors, and forced config values. */
export class SchedulerEntry {
  constructor(runtimeClass, diffusersClass, overrides = {}) {
    Object.assign(this, { runtimeClass, diffusersClass, overrides });
  }

  configFor(config) { return { ...config, ...this.overrides, _class_name: this.diffusersClass }; }

  create(config) { return new this.runtimeClass(this.configFor(config)); }
}

export const SCHEDULERS = {
  ddim: new SchedulerEntry(DDIM, 'DDIMScheduler'),
  euler: new SchedulerEntry(EulerDiscrete, 'EulerDiscreteScheduler'),
  'dpm++2m': new SchedulerEntry(DPMSolverPP2M, 'DPMSolverMultistepScheduler',
    { algorithm_type: 'dpmsolver++', solver_order: 2 }),
  pndm: new SchedulerEntry(PNDM, 'PNDMScheduler', { skip_prk_steps: true }),
};

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

export function schedulerNameFor(config) {
  if (!isObject(config)) throw new PocketdiffError(`scheduler config must be an object, got ${typeName(config)}`);
  const cls = config._class_name;
  for (const [name, entry] of Object.entries(SCHEDULERS)) if (entry.diffusersClass === cls) return name;
  throw choiceError('scheduler class', cls ?? null, Object.values(SCHEDULERS).map((e) => e.diffusersClass));
}

export function getSchedulerEntry(name) {
  if (typeof name !== 'string' || !Object.hasOwn(SCHEDULERS, name)) throw choiceError('scheduler', name, SCHEDULERS);
  return SCHEDULERS[name];
}

export function schedulerFromConfig(config, name = null) {
  if (!isObject(config)) throw new PocketdiffError(`scheduler config must be an object, got ${typeName(config)}`);
  return getSchedulerEntry(name || schedulerNameFor(config)).create(config);
}
