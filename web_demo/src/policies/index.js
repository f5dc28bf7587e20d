// Mirrors pocketdiff/runtime/policies/__init__.py: the step policies' one registry. A bundle's manifest names its
// policy and params (sampler: {policy, params}); one without gets defaultPolicyName of its UNet.

import { PocketdiffError, choiceError, repr } from '../errors.js';
import { AdaDiffPolicy } from './adadiff.js';
import { STEP_BUDGET } from './budget.js';
import { CFGPolicy } from './cfg.js';
import { ClockworkPolicy } from './clockwork.js';
import { DDSMPolicy } from './ddsm.js';
import { GuidanceEmbeddedPolicy, W_INPUT } from './guidance_embedded.js';

export { AdaDiffPolicy, CFGPolicy, ClockworkPolicy, DDSMPolicy, GuidanceEmbeddedPolicy };
export { STEP_BUDGET, BudgetSpec, isAuto, predictSteps } from './budget.js';
export { UNET, Call, Denoise, StepPolicy, cfgCombine, unetFeeds } from './base.js';

export const POLICIES = {};

export function registerPolicy(cls) {
  if (!cls.policyName) throw new PocketdiffError(`policy class ${cls.name} has no name`);
  POLICIES[cls.policyName] = cls;
  return cls;
}

registerPolicy(CFGPolicy);
registerPolicy(GuidanceEmbeddedPolicy);
registerPolicy(DDSMPolicy);
registerPolicy(ClockworkPolicy);
registerPolicy(AdaDiffPolicy);

/** The policy `name` with `params`; an unknown name or a bad param is one error naming what is allowed. */
export function makePolicy(name, params = null) {
  if (!Object.hasOwn(POLICIES, name)) throw choiceError('sampler policy', name, POLICIES);
  if (params !== null && params !== undefined && (typeof params !== 'object' || Array.isArray(params))) {
    throw new PocketdiffError(`sampler policy ${repr(name)}: params must be an object, got ${repr(params)}`);
  }
  return new POLICIES[name](params);
}

/** The policy a UNet implies when nothing names one: a w-embedded UNet's single pass, else CFG. */
export function defaultPolicyName(unetInputNames) {
  return [...unetInputNames].includes(W_INPUT) ? GuidanceEmbeddedPolicy.policyName : CFGPolicy.policyName;
}

/** Every role this runtime can call: the text encoder and decoder, and each registered policy's. */
export function runtimeRoles() {
  const roles = new Set(['text_encoder', 'vae_decoder', STEP_BUDGET]);
  for (const cls of Object.values(POLICIES)) for (const r of cls.ROLES) roles.add(r);
  return roles;
}
