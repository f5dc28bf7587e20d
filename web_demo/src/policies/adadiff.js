// Mirrors pocketdiff/runtime/policies/adadiff.py: the UNet segment by segment (unet_seg_in, then unet_seg_l{L}
// for L = n-2 .. 0), stopping at the first exit head (unet_exit_l{L}) whose uncertainty is below the threshold
// for every sample (under two-pass CFG: the larger of the two halves'). Threshold 0 never exits.

import { PocketdiffError, repr } from '../errors.js';
import { GuidedPolicy } from './guided.js';

export const MAX_LEVELS = 5;
export const SEG_IN = 'unet_seg_in';
const HIDDEN = 'hidden', HIDDEN_OUT = 'hidden_out', TEMB = 'temb', UNCERTAINTY = 'uncertainty';

export const segRole = (level) => `unet_seg_l${level}`;
export const exitRole = (level) => `unet_exit_l${level}`;
export const skipsName = (level) => `skips_l${level}`;
export const SEG_ROLES = Array.from({ length: MAX_LEVELS - 1 }, (_, l) => segRole(l));
export const EXIT_ROLES = Array.from({ length: MAX_LEVELS - 1 }, (_, l) => exitRole(l + 1));

/** Per step, the level it stopped at (0: the full UNet ran), read from a call trace. */
export function exitLevels(trace, steps) {
  const out = [];
  for (let i = 0; i < steps; i++) {
    const roles = trace.filter((c) => c.step === i).map((c) => c.role);
    if (roles.includes(segRole(0)) || !roles.length) out.push(0);
    else out.push(Number(roles.filter((r) => r.startsWith('unet_exit_l')).at(-1).slice('unet_exit_l'.length)));
  }
  return out;
}

export class AdaDiffPolicy extends GuidedPolicy {
  static policyName = 'adadiff';
  static ROLES = [SEG_IN, ...SEG_ROLES, ...EXIT_ROLES];
  static PARAMS = { levels: ['int', 3], exits: ['list', [1]], threshold: ['float', 0.0], calibration: ['dict', {}] };
  static dataDependent = true;

  validate() {
    const n = this.params.levels, exits = this.params.exits, tau = this.params.threshold;
    if (!(n >= 2 && n <= MAX_LEVELS)) {
      throw new PocketdiffError(`sampler policy 'adadiff': levels must be in [2, ${MAX_LEVELS}], got ${n}`);
    }
    if (!exits.length || exits.some((x) => !Number.isInteger(x) || !(x >= 1 && x < n)) || new Set(exits).size < exits.length) {
      throw new PocketdiffError(`sampler policy 'adadiff': exits must be distinct levels in [1, ${n - 1}], got ${repr(exits)}`);
    }
    if (!(tau >= 0.0 && tau <= 1.0)) {
      throw new PocketdiffError(`sampler policy 'adadiff': threshold must be in [0, 1], got ${repr(tau)}`);
    }
    this.params.exits = [...exits].sort((a, b) => b - a);
  }

  roles() {
    const n = this.params.levels;
    const segs = Array.from({ length: n - 1 }, (_, k) => segRole(n - 2 - k));
    return [SEG_IN, ...segs, ...this.params.exits.map(exitRole)];
  }

  begin(run) { return this.guidanceState(run); }

  async step(run, i, t, sample, state) {
    const n = this.params.levels, exits = new Set(this.params.exits), tau = Math.fround(this.params.threshold);
    const carried = await run.call(SEG_IN, this.guidedFeeds(run, t, sample, state));
    let hidden = carried[HIDDEN];
    for (let level = n - 1; level >= 0; level--) {
      if (level < n - 1) {
        const out = await run.call(segRole(level), { [HIDDEN]: hidden, [skipsName(level)]: carried[skipsName(level)],
          [TEMB]: carried[TEMB], encoder_hidden_states: run.hidden });
        if (level === 0) return this.combine(run, out.out_sample, state);
        hidden = out[HIDDEN_OUT];
      }
      if (exits.has(level)) {
        const head = await run.call(exitRole(level), { [HIDDEN]: hidden, [skipsName(0)]: carried[skipsName(0)],
          [TEMB]: carried[TEMB] });
        const u = head[UNCERTAINTY].numbers();
        if (Math.max(...u) < tau) return this.combine(run, head.out_sample, state);
      }
    }
    throw new PocketdiffError("sampler policy 'adadiff': the segments ended without an output");
  }
}
