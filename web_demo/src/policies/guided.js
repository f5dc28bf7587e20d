// Mirrors pocketdiff/runtime/policies/guided.py: the guidance half every multi-role UNet policy shares (ddsm,
// clockwork, adadiff). A UNet with a timestep_cond input: one batch-1 call with guidance_scale_embedding(w - 1);
// else two-pass CFG (texts [negative, prompt], one batch-2 call on [x, x], combined; guidance <= 1: batch 1).

import { PocketdiffError } from '../errors.js';
import { Tensor } from '../sessions.js';
import { StepPolicy, cfgCombine, unetFeeds } from './base.js';
import { pyNum } from './cfg.js';
import { W_INPUT, embedDim, guidanceScaleEmbedding } from './guidance_embedded.js';

export class GuidedPolicy extends StepPolicy {
  embedded = false;

  check(sessions, guidance) {
    const roles = this.roles();
    this.embedded = sessions[roles[0]].inputs.some((s) => s.name === W_INPUT);
    const batch = this.embedded || guidance <= 1.0 ? 1 : 2;
    for (const role of roles) {
      const fixed = sessions[role].fixedBatch;
      if (fixed !== null && fixed !== batch) {
        throw new PocketdiffError(`the ${role} UNet was exported at fixed batch ${fixed}; guidance ${pyNum(guidance)} ` +
          `needs batch ${batch}: use the onnx backend or re-export`);
      }
    }
  }

  texts(guidance) { return guidance > 1.0 && !this.embedded ? ['negative', 'prompt'] : ['prompt']; }

  /** {w: embedding} for a guidance-embedded UNet, else nothing (merge into begin's state). */
  guidanceState(run) {
    if (this.embedded) return { w: guidanceScaleEmbedding(run.guidance - 1, embedDim(run.sessions[this.roles()[0]])) };
    return {};
  }

  /** The UNet inputs of one guided call: the sample doubled under two-pass CFG, the w embedding if any. */
  guidedFeeds(run, t, sample, state, extra = {}) {
    if ('w' in state) return unetFeeds(sample, t, run.hidden, { [W_INPUT]: state.w, ...extra });
    const cfg = run.guidance > 1.0;
    return unetFeeds(cfg ? Tensor.concat([sample, sample]) : sample, t, run.hidden, extra);
  }

  /** A guided call's output [B, C, h, w] -> the model output [1, C, h, w] (CFG-combined at batch 2). */
  combine(run, out, state) {
    return !('w' in state) && run.guidance > 1.0 ? cfgCombine(out, run.guidance) : out;
  }

  /** [the guided model output, the call's raw outputs]; extra feeds go in unchanged. */
  async guidedCall(run, role, t, sample, state, extra = {}) {
    const out = await run.call(role, this.guidedFeeds(run, t, sample, state, extra));
    return [this.combine(run, out.out_sample, state), out];
  }
}
