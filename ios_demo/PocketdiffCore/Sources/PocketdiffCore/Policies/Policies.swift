// Mirrors pocketdiff/runtime/policies/__init__.py: the one registry of step policies, in order, and the roles
// this runtime can call. A bundle's manifest names its policy and params (sampler: {policy, params}); a bundle
// written before policies has none and gets defaultPolicyName of its UNet.
import Foundation

public let POLICIES: [StepPolicy.Type] = [
    CFGPolicy.self, GuidanceEmbeddedPolicy.self, DDSMPolicy.self, ClockworkPolicy.self, AdaDiffPolicy.self,
]

/// The policy `name` with `params`; an unknown name or a bad param is one error naming what is allowed.
public func makePolicy(_ name: String, _ params: JSON? = nil) throws -> StepPolicy {
    guard let cls = POLICIES.first(where: { $0.policyName == name }) else {
        throw choiceError("sampler policy", name, POLICIES.map { $0.policyName })
    }
    if let params, !params.isNull, params.objectValue == nil {
        throw PocketdiffError("sampler policy \(pyString(name)): params must be an object, got \(params.repr)")
    }
    return try cls.init(params?.objectValue)
}

/// The policy a UNet implies when nothing names one: a w-embedded UNet's single pass, else CFG.
public func defaultPolicyName(_ unetInputNames: [String]) -> String {
    unetInputNames.contains(W_INPUT) ? GuidanceEmbeddedPolicy.policyName : CFGPolicy.policyName
}

/// Every role this runtime can call: the text encoder and decoder, the step budget, and each policy's.
public func runtimeRoles() -> Set<String> {
    Set(["text_encoder", "vae_decoder", STEP_BUDGET]).union(POLICIES.flatMap { $0.ROLES })
}
