// Port of pocketdiff/runtime/policies/__init__.py: the one registry of step policies, make_policy and
// default_policy_name. A bundle's manifest names its policy and params (sampler: {policy, params}); a bundle
// written before policies existed gets the policy its UNet implies.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.choiceError
import pocketdiff.core.pyRepr

/** A registered policy: its name, every role it may call, and how to make it from params. */
class PolicyClass(val name: String, val roles: List<String>, val make: (Map<String, Any?>?) -> StepPolicy)

val POLICIES: LinkedHashMap<String, PolicyClass> = LinkedHashMap()

/** Add a policy class to the registry under its name. */
fun registerPolicy(cls: PolicyClass): PolicyClass {
    if (cls.name.isEmpty()) throw PocketdiffError("policy class has no name")
    POLICIES[cls.name] = cls
    return cls
}

private val registered = run {
    registerPolicy(PolicyClass(CFGPolicy.NAME, CFGPolicy.ROLES) { CFGPolicy(it) })
    registerPolicy(PolicyClass(GuidanceEmbeddedPolicy.NAME, GuidanceEmbeddedPolicy.ROLES) { GuidanceEmbeddedPolicy(it) })
    registerPolicy(PolicyClass(DDSMPolicy.NAME, DDSMPolicy.ROLES) { DDSMPolicy(it) })
    registerPolicy(PolicyClass(ClockworkPolicy.NAME, ClockworkPolicy.ROLES) { ClockworkPolicy(it) })
    registerPolicy(PolicyClass(AdaDiffPolicy.NAME, AdaDiffPolicy.ROLES) { AdaDiffPolicy(it) })
    true
}

private fun policies(): LinkedHashMap<String, PolicyClass> { check(registered); return POLICIES }

/** The policy ``name`` with ``params`` (Python values from the manifest); one error naming what is allowed. */
fun makePolicy(name: Any?, params: Any? = null): StepPolicy {
    val cls = policies()[name as? String ?: ""]
    if (cls == null || name !is String) throw choiceError("sampler policy", name, policies().keys)
    if (params != null && params !is Map<*, *>)
        throw PocketdiffError("sampler policy ${pyRepr(name)}: params must be an object, got ${pyRepr(params)}")
    @Suppress("UNCHECKED_CAST")
    return cls.make(params as Map<String, Any?>?)
}

/** The policy a UNet implies when nothing names one: a w-embedded UNet's single pass, else CFG. */
fun defaultPolicyName(unetInputNames: Collection<String>): String =
    if (W_INPUT in unetInputNames) GuidanceEmbeddedPolicy.NAME else CFGPolicy.NAME

/** Every role this runtime can call: the text encoder and decoder, and each registered policy's. */
fun runtimeRoles(): Set<String> =
    setOf("text_encoder", "vae_decoder", STEP_BUDGET) + policies().values.flatMap { it.roles }
