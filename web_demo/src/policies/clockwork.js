// Mirrors pocketdiff/runtime/policies/clockwork.py: full steps run unet_cw_full and keep its low-resolution
// output (lowres_out); light steps run unet_cw_light fed that cache (lowres_cache). The first and last steps are
// always full; between them step i is light when i % period != 0, or exactly the listed light_steps.

import { PocketdiffError, repr } from '../errors.js';
import { GuidedPolicy } from './guided.js';

export const CW_FULL = 'unet_cw_full';
export const CW_LIGHT = 'unet_cw_light';
export const CACHE_OUT = 'lowres_out';
export const CACHE_IN = 'lowres_cache';

/** One flag per step, true where the step is light. */
export function clockSchedule(steps, period = 1, lightSteps = []) {
  if (lightSteps.length) {
    const bad = lightSteps.filter((i) => !(i > 0 && i < steps - 1));
    if (bad.length) {
      throw new PocketdiffError(`clockwork light_steps ${repr(lightSteps)}: step ${bad[0]} is not between the first ` +
        `(0) and the last (${steps - 1}) of ${steps} steps, which are always full`);
    }
    return Array.from({ length: steps }, (_, i) => lightSteps.includes(i));
  }
  return Array.from({ length: steps }, (_, i) => i > 0 && i < steps - 1 && i % period !== 0);
}

export class ClockworkPolicy extends GuidedPolicy {
  static policyName = 'clockwork';
  static ROLES = [CW_FULL, CW_LIGHT];
  static PARAMS = { period: ['int', 2], light_steps: ['list', []] };

  validate() {
    if (this.params.period < 1) {
      throw new PocketdiffError(`sampler policy 'clockwork': period must be >= 1, got ${this.params.period}`);
    }
    const steps = this.params.light_steps;
    if (steps.some((i) => !Number.isInteger(i)) || new Set(steps).size !== steps.length) {
      throw new PocketdiffError(`sampler policy 'clockwork': light_steps must be distinct step indices, got ${repr(steps)}`);
    }
    this.params.light_steps = [...steps].sort((a, b) => a - b);
  }

  roles() {
    return this.params.light_steps.length || this.params.period > 1 ? [CW_FULL, CW_LIGHT] : [CW_FULL];
  }

  schedule(steps) { return clockSchedule(steps, this.params.period, this.params.light_steps); }

  begin(run) { return { ...this.guidanceState(run), light: this.schedule(run.timesteps.length), cache: null }; }

  async step(run, i, t, sample, state) {
    if (state.light[i]) return (await this.guidedCall(run, CW_LIGHT, t, sample, state, { [CACHE_IN]: state.cache }))[0];
    const [out, raw] = await this.guidedCall(run, CW_FULL, t, sample, state);
    state.cache = raw[CACHE_OUT];
    return out;
  }
}
