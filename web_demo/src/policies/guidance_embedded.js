// Mirrors pocketdiff/runtime/policies/guidance_embedded.py: one batch-1 UNet pass per step on the prompt alone,
// the guidance scale fed as timestep_cond = guidance_scale_embedding(w - 1). No negative prompt, no combination.

import { PocketdiffError, repr } from '../errors.js';
import { Tensor } from '../sessions.js';
import { StepPolicy, UNET, unetFeeds } from './base.js';

export const W_INPUT = 'timestep_cond';

/** [1, dim] float32: diffusers' get_guidance_scale_embedding of one w (the policy passes guidance - 1). */
export function guidanceScaleEmbedding(w, dim) {
  const f = Math.fround;
  const half = Math.floor(dim / 2);
  const c = f(-(Math.log(10000.0) / (half - 1)));
  const scale = f(w * 1000.0);
  const out = new Float32Array(dim);
  for (let k = 0; k < half; k++) {
    const e = f(scale * f(Math.exp(f(k * c))));
    out[k] = f(Math.sin(e));
    out[half + k] = f(Math.cos(e));
  }
  return new Tensor(out, [1, dim], 'float32'); // an odd dim keeps its zero pad at the end
}

/** The width of a UNet session's timestep_cond input. */
export function embedDim(session) {
  const spec = session.inputs.find((s) => s.name === W_INPUT);
  const last = spec?.shape[spec.shape.length - 1];
  if (!spec || typeof last !== 'number') {
    throw new PocketdiffError(`sampler policy 'guidance_embedded' needs a UNet with a ${W_INPUT} input of fixed ` +
      `width; ${session.path} has inputs ${repr(session.inputs.map((s) => s.name))}`);
  }
  return last;
}

export class GuidanceEmbeddedPolicy extends StepPolicy {
  static policyName = 'guidance_embedded';

  check(sessions, guidance) {
    embedDim(sessions[UNET]);
    const fixed = sessions[UNET].fixedBatch;
    if (fixed !== null && fixed !== 1) {
      throw new PocketdiffError('a guidance-embedded UNet runs at batch 1; this one was exported at fixed batch ' +
        `${fixed}`);
    }
  }

  begin(run) { return { w: guidanceScaleEmbedding(run.guidance - 1, embedDim(run.sessions[UNET])) }; }

  async step(run, i, t, sample, state) {
    return (await run.call(UNET, unetFeeds(sample, t, run.hidden, { [W_INPUT]: state.w }))).out_sample;
  }
}
