// Mirrors pocketdiff/runtime/policies/ddsm.py: a per-step UNet width (DDSM). Step i runs the UNet of width
// widths[i], each width its own role (unet: 1.0, unet_w625: 0.625, ...), guided as guided.js; the schedule pins
// the step count.

import { PocketdiffError, repr } from '../errors.js';
import { UNET } from './base.js';
import { GuidedPolicy } from './guided.js';

export const WIDTH_STEPS = 8; // widths are multiples of 1/8

export function widthRole(width) {
  return Number(width) === 1.0 ? UNET : `unet_w${String(Math.round(Number(width) * 1000)).padStart(3, '0')}`;
}

export const WIDTH_ROLES = Array.from({ length: WIDTH_STEPS - 1 }, (_, k) => widthRole((k + 1) / WIDTH_STEPS));

export function checkWidth(width) {
  if (typeof width !== 'number' || !(width > 0 && width <= 1) ||
    Math.abs(width * WIDTH_STEPS - Math.round(width * WIDTH_STEPS)) > 1e-6) {
    throw new PocketdiffError(`sampler policy 'ddsm': width ${repr(width)} is not a multiple of 1/8 in (0, 1]`);
  }
  return width;
}

export class DDSMPolicy extends GuidedPolicy {
  static policyName = 'ddsm';
  static ROLES = [UNET, ...WIDTH_ROLES];
  static PARAMS = { widths: ['list', []] };

  validate() {
    if (!this.params.widths.length) {
      throw new PocketdiffError("sampler policy 'ddsm' needs params.widths: one UNet width per step");
    }
    this.params.widths = this.params.widths.map(checkWidth);
  }

  roles() { return [...new Set(this.params.widths.map(widthRole))]; }

  fixedSteps() { return this.params.widths.length; }

  begin(run) {
    const n = run.timesteps.length, widths = this.params.widths;
    if (n !== widths.length) {
      throw new PocketdiffError(`the ddsm schedule has ${widths.length} widths, one per step, so it runs ` +
        `${widths.length} steps; ${n} were asked for`);
    }
    return this.guidanceState(run);
  }

  async step(run, i, t, sample, state) {
    return (await this.guidedCall(run, widthRole(this.params.widths[i]), t, sample, state))[0];
  }
}
