// Mirrors pocketdiff/runtime/policies/guided.py: the guidance half every multi-role UNet policy shares (ddsm,
// clockwork, adadiff): a UNet with a timestep_cond input runs one batch-1 call with guidanceScaleEmbedding(w - 1);
// else two-pass CFG in one batch-2 call on [x, x] (guidance <= 1: one batch-1 call on the prompt). Which one is read
// from the sessions in check, which the loop calls before texts.
import Foundation

public class GuidedPolicy: StepPolicy {
    var embedded = false

    public override func check(_ sessions: [String: Session], _ guidance: Double) throws {
        let roles = self.roles()
        embedded = sessions[roles[0]]!.inputs.contains { $0.name == W_INPUT }
        let batch = embedded || guidance <= 1.0 ? 1 : 2
        for role in roles {
            if let fixed = sessions[role]!.fixedBatch, fixed != batch {
                throw PocketdiffError("the \(role) UNet was exported at fixed batch \(fixed); guidance \(pyFloat(guidance)) "
                                      + "needs batch \(batch): use the onnx backend or re-export")
            }
        }
    }

    public override func texts(_ guidance: Double) -> [String] {
        guidance > 1.0 && !embedded ? ["negative", "prompt"] : ["prompt"]
    }

    /// The w embedding for a guidance-embedded UNet, else nothing (merged into begin's state).
    func guidanceState(_ run: Denoise) throws -> PolicyState {
        let state = PolicyState()
        if embedded { state.w = guidanceScaleEmbedding(run.guidance - 1, try embedDim(run.sessions[roles()[0]]!)) }
        return state
    }

    /// The UNet inputs of one guided call: the sample doubled under two-pass CFG, the w embedding if any.
    func guidedFeeds(_ run: Denoise, _ t: Double, _ sample: Tensor, _ state: PolicyState, extra: [String: Tensor] = [:])
        -> [String: Tensor] {
        if let w = state.w { return unetFeeds(sample, t, run.hidden, extra: extra.merging([W_INPUT: w]) { $1 }) }
        return unetFeeds(run.guidance > 1.0 ? .concat([sample, sample]) : sample, t, run.hidden, extra: extra)
    }

    /// A guided call's output [B, C, h, w] -> the model output [1, C, h, w] (CFG-combined at batch 2).
    func combine(_ run: Denoise, _ out: Tensor, _ state: PolicyState) -> Tensor {
        state.w == nil && run.guidance > 1.0 ? cfgCombine(out, run.guidance) : out
    }

    /// (the guided model output, the call's raw outputs); extra feeds go in unchanged.
    func guidedCall(_ run: Denoise, _ role: String, _ t: Double, _ sample: Tensor, _ state: PolicyState,
                    extra: [String: Tensor] = [:]) throws -> (Tensor, [String: Tensor]) {
        let out = try run.call(role, guidedFeeds(run, t, sample, state, extra: extra))
        return (combine(run, out["out_sample"]!, state), out)
    }
}
