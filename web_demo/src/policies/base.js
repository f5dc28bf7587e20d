// Mirrors pocketdiff/runtime/policies/base.py: the step-policy interface the one sampler loop (sampler.js) asks.
// Per generation the loop encodes the texts the policy names (texts), calls begin once, then at every step i
// hands the policy the scheduler-scaled latent and takes back the scheduler's model output (step). The policy
// calls roles through run.call (async; timed and traced by the loop) and keeps what carries in its state.

import { PocketdiffError, repr } from '../errors.js';
import { Tensor } from '../sessions.js';

export const UNET = 'unet';

/** One session call: the step it belongs to (null: before or after the loop), role, batch, wall time (ms). */
export class Call {
  constructor(step, role, batch, ms) { Object.assign(this, { step, role, batch, ms }); }

  toDict(withTime = true) {
    const d = { step: this.step, role: this.role, batch: this.batch };
    return withTime ? { ...d, ms: Math.round(this.ms * 1e4) / 1e4 } : d;
  }
}

/** What a policy sees of the generation in progress: {hidden, guidance, timesteps, sessions, call}. */
export class Denoise {
  constructor(hidden, guidance, timesteps, sessions, call) {
    Object.assign(this, { hidden, guidance, timesteps, sessions, call });
  }
}

/** The UNet's inputs: sample [B,C,h,w], timestep [] float32, states [B,77,D], and extras. */
export function unetFeeds(sample, t, hidden, extra = {}) {
  return { sample, timestep: new Tensor(new Float32Array([t]), [], 'float32'), encoder_hidden_states: hidden, ...extra };
}

/** [2, ...] outputs on [negative, prompt] -> out_u + w (out_c - out_u) [1, ...] (float32 w). */
export function cfgCombine(out, guidance) {
  const f = Math.fround, w = f(guidance);
  const u = out.rows(0, 1), c = out.rows(1, 2);
  const data = new Float32Array(u.size);
  for (let i = 0; i < data.length; i++) data[i] = f(u.data[i] + f(w * f(c.data[i] - u.data[i])));
  return new Tensor(data, u.shape, 'float32');
}

// A param's kind -> its check and Python type name (a JS number cannot tell 1.0 from 1: 'float' takes any).
const KINDS = {
  int: [(v) => Number.isInteger(v), 'int'],
  float: [(v) => typeof v === 'number', 'float'],
  bool: [(v) => typeof v === 'boolean', 'bool'],
  str: [(v) => typeof v === 'string', 'str'],
  list: [(v) => Array.isArray(v), 'list'],
  dict: [(v) => v !== null && typeof v === 'object' && !Array.isArray(v), 'dict'],
};

export class StepPolicy {
  static policyName = '';
  static ROLES = [UNET];
  static PARAMS = {}; // param -> [kind, default]
  static dataDependent = false;

  constructor(params = null) {
    const cls = this.constructor;
    params = { ...(params ?? {}) };
    const unknown = Object.keys(params).filter((k) => !Object.hasOwn(cls.PARAMS, k)).sort();
    if (unknown.length) {
      const allowed = Object.keys(cls.PARAMS).join(', ') || 'none';
      throw new PocketdiffError(`sampler policy ${repr(this.name)} has no param ${repr(unknown[0])}; allowed: ${allowed}`);
    }
    this.params = {};
    for (const [key, [kind, def]] of Object.entries(cls.PARAMS)) {
      const value = Object.hasOwn(params, key) ? params[key] : structuredClone(def);
      const [ok, pyName] = KINDS[kind];
      if (!ok(value)) {
        throw new PocketdiffError(`sampler policy ${repr(this.name)}: param ${key} must be ${pyName}, got ${repr(value)}`);
      }
      this.params[key] = value;
    }
    this.validate();
  }

  get name() { return this.constructor.policyName; }

  get dataDependent() { return this.constructor.dataDependent; }

  /** Check the params beyond their types (throw PocketdiffError). */
  validate() {}

  /** The roles this instance calls in the loop (the loop adds the text encoder and the decoder). */
  roles() { return this.constructor.ROLES; }

  /** The one step count this policy runs, or null: any. */
  fixedSteps() { return null; }

  /** Which texts to encode, in batch order: 'negative' and/or 'prompt'. */
  texts(guidance) { return ['prompt']; }

  /** Refuse, before any model runs, a generation these sessions cannot serve. */
  check(sessions, guidance) {}

  /** The state carried from step to step. */
  begin(run) { return {}; }

  /** async: the scheduler's model output Tensor [1,C,h,w] for step i at timestep t from the scaled latent. */
  async step(run, i, t, sample, state) {
    throw new PocketdiffError(`sampler policy ${this.constructor.name} does not implement step()`);
  }

  toDict() { return { policy: this.name, params: { ...this.params } }; }
}
