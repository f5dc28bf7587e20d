// Mirrors pocketdiff/runtime/policies/cfg.py: classifier-free guidance as diffusers runs it. With guidance w > 1
// the texts are [negative, prompt] and each step is one batch-2 call on [x, x], combined as
// out_u + w (out_c - out_u); with w <= 1, one batch-1 call on the prompt alone.

import { PocketdiffError } from '../errors.js';
import { Tensor } from '../sessions.js';
import { StepPolicy, UNET, cfgCombine, unetFeeds } from './base.js';

const pyNum = (g) => (Number.isInteger(g) ? `${g}.0` : String(g)); // guidance is a Python float

export class CFGPolicy extends StepPolicy {
  static policyName = 'cfg';

  texts(guidance) { return guidance > 1.0 ? ['negative', 'prompt'] : ['prompt']; }

  check(sessions, guidance) {
    const fixed = sessions[UNET].fixedBatch, cfg = guidance > 1.0;
    if (fixed !== null && fixed !== (cfg ? 2 : 1)) {
      throw new PocketdiffError(`this UNet was exported at fixed batch ${fixed} (` +
        `${fixed === 2 ? 'guidance > 1, CFG' : 'no guidance'}); guidance ${pyNum(guidance)} needs batch ` +
        `${cfg ? 2 : 1}: use guidance ${fixed === 2 ? '> 1' : '<= 1'}, re-export with a matching ` +
        '--guidance, or the onnx backend');
    }
  }

  async step(run, i, t, sample, state) {
    const cfg = run.guidance > 1.0;
    const out = await run.call(UNET, unetFeeds(cfg ? Tensor.concat([sample, sample]) : sample, t, run.hidden));
    return cfg ? cfgCombine(out.out_sample, run.guidance) : out.out_sample;
  }
}

export { pyNum };
