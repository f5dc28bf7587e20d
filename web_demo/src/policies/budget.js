// Mirrors pocketdiff/runtime/policies/budget.py: BudgetFusion's step count, picked per prompt before the loop
// (`steps: "auto[:PRESET|METRIC=VALUE,...]"`) from the `step_budget` role's predicted quality [1, K, M].
// The rule: the smallest step count whose predicted quality reaches every target (>= for a similarity, <= for a
// distance); when none does, the largest.

import { PocketdiffError, choiceError, repr, reprFloat } from '../errors.js';

export const STEP_BUDGET = 'step_budget';
export const HIDDEN_IN = 'encoder_hidden_states';
export const QUALITY = 'quality';
export const AUTO = 'auto';

export function isAuto(steps) {
  return typeof steps === 'string' && (steps === AUTO || steps.startsWith(AUTO + ':'));
}

const pyInt = (s) => {
  if (typeof s === 'boolean') return Number(s);
  if (typeof s === 'number' && Number.isFinite(s)) return Math.trunc(s);
  if (typeof s === 'string' && /^\s*[-+]?\d+\s*$/.test(s)) return parseInt(s, 10);
  throw new Error(`invalid literal for int(): ${repr(s)}`);
};
const pyFloat = (v) => {
  if (typeof v === 'number') return v;
  if (typeof v === 'boolean') return Number(v);
  if (typeof v === 'string' && v.trim() !== '' && !Number.isNaN(Number(v))) return Number(v);
  throw new Error(`could not convert to float: ${repr(v)}`);
};
const fmt = (v) => (Number.isInteger(v) ? reprFloat(v) : repr(v)); // a Python float

export class BudgetSpec {
  constructor(stepCounts, metrics, higherIsBetter, presets = {}, defaultPreset = null) {
    Object.assign(this, { stepCounts, metrics, higherIsBetter, presets, defaultPreset });
  }

  static fromDict(d) {
    let spec;
    try {
      const need = (k) => { if (!(k in d)) throw new Error(repr(k)); return d[k]; };
      const list = (v) => { if (v === null || typeof v !== 'object') throw new Error(`${repr(v)} is not iterable`); return Array.isArray(v) ? v : Object.keys(v); };
      const presets = {};
      for (const [k, t] of Object.entries(d.presets ?? {})) {
        if (t === null || typeof t !== 'object' || Array.isArray(t)) throw new Error(`${repr(t)} has no attribute 'items'`);
        presets[k] = Object.fromEntries(Object.entries(t).map(([m, v]) => [m, pyFloat(v)]));
      }
      spec = new BudgetSpec(list(need('step_counts')).map(pyInt), list(need('metrics')),
        list(need('higher_is_better')).map(Boolean), presets, d.default_preset ?? null);
    } catch (exc) {
      throw new PocketdiffError(`bad step_budget entry ${repr(d)}: ${exc.message}`);
    }
    return spec.validate();
  }

  validate() {
    const s = this.stepCounts;
    const sorted = [...new Set(s)].sort((a, b) => a - b);
    if (s.length < 1 || s.join() !== sorted.join() || s[0] < 1) {
      throw new PocketdiffError(`step_budget step_counts must be increasing integers >= 1, got ${repr(s)}`);
    }
    if (this.metrics.length !== this.higherIsBetter.length || !this.metrics.length) {
      throw new PocketdiffError(`step_budget: ${this.metrics.length} metrics, ${this.higherIsBetter.length} directions`);
    }
    for (const [name, targets] of Object.entries(this.presets)) this.checkTargets(targets, `preset ${repr(name)}`);
    if (this.defaultPreset !== null && !Object.hasOwn(this.presets, this.defaultPreset)) {
      throw choiceError('step_budget default preset', this.defaultPreset, this.presets);
    }
    return this;
  }

  checkTargets(targets, what) {
    if (!Object.keys(targets).length) throw new PocketdiffError(`step budget ${what}: no targets`);
    for (const [m, v] of Object.entries(targets)) {
      if (!this.metrics.includes(m)) throw choiceError(`step budget metric in ${what}`, m, this.metrics);
      if (!Number.isFinite(v)) throw new PocketdiffError(`step budget ${what}: target ${m}=${fmt(v)} is not a finite number`);
    }
  }

  toDict() {
    return { step_counts: this.stepCounts, metrics: this.metrics, higher_is_better: this.higherIsBetter,
      presets: this.presets, default_preset: this.defaultPreset };
  }

  /** The targets `request` names; one error line for a bad one. */
  targets(request) {
    if (!isAuto(request)) {
      throw new PocketdiffError(`steps must be an integer >= 1 or 'auto[:PRESET|METRIC=VALUE,...]', got ${repr(request)}`);
    }
    const rest = request !== AUTO ? request.slice(AUTO.length + 1) : '';
    if (!rest) {
      if (this.defaultPreset === null) {
        throw new PocketdiffError("this bundle's step budget has no default preset; name one: auto:NAME " +
          `(${Object.keys(this.presets).join(', ') || 'none'}) or auto:METRIC=VALUE`);
      }
      return { ...this.presets[this.defaultPreset] };
    }
    if (!rest.includes('=')) {
      if (!Object.hasOwn(this.presets, rest)) throw choiceError('step budget preset', rest, this.presets);
      return { ...this.presets[rest] };
    }
    const targets = {};
    for (const item of rest.split(',')) {
      const k = item.indexOf('=');
      const name = k < 0 ? item : item.slice(0, k), value = k < 0 ? '' : item.slice(k + 1);
      const v = value.trim() === '' ? NaN : Number(value.trim().replace(/^(-?)(inf|infinity)$/i, '$1Infinity'));
      if (Number.isNaN(v) && !/^\s*[-+]?nan\s*$/i.test(value)) {
        throw new PocketdiffError(`step budget target ${repr(item)} is not METRIC=NUMBER`);
      }
      targets[name.trim()] = v;
    }
    this.checkTargets(targets, `request ${repr(request)}`);
    return targets;
  }

  /** The smallest step count whose quality [K][M] reaches every target, else the largest. */
  choose(quality, targets) {
    const k = this.stepCounts.length;
    for (let i = 0; i < k; i++) {
      const ok = Object.entries(targets).every(([name, tau]) => {
        const j = this.metrics.indexOf(name);
        const q = quality[i][j];
        return this.higherIsBetter[j] ? q >= tau : q <= tau;
      });
      if (ok) return this.stepCounts[i];
    }
    return this.stepCounts[k - 1];
  }
}

/** Run step_budget (through the loop's traced `call`) on the prompt's states and apply the rule. */
export async function predictSteps(call, spec, promptHidden, request) {
  const targets = spec.targets(request);
  const out = await call(STEP_BUDGET, { [HIDDEN_IN]: promptHidden });
  const q = out[QUALITY];
  const [, K, M] = q.shape;
  const quality = Array.from({ length: K }, (_, i) => Array.from(q.data.subarray(i * M, (i + 1) * M)));
  const steps = spec.choose(quality, targets);
  return [steps, { request, targets, predicted: quality, steps }];
}
