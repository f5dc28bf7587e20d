// Mirrors pocketdiff/runtime/policies/cfg.py: classifier-free guidance as diffusers runs it, one UNet call per
// step. With guidance w > 1 the texts are [negative, prompt] and each step is one batch-2 call on [x, x], combined
// as out_u + w (out_c - out_u); with w <= 1, one batch-1 call on the prompt alone.
import Foundation

public final class CFGPolicy: StepPolicy {
    public override class var policyName: String { "cfg" }

    public override func texts(_ guidance: Double) -> [String] { guidance > 1.0 ? ["negative", "prompt"] : ["prompt"] }

    public override func check(_ sessions: [String: Session], _ guidance: Double) throws {
        let fixed = sessions[UNET]!.fixedBatch, cfg = guidance > 1.0
        if let fixed, fixed != (cfg ? 2 : 1) {
            throw PocketdiffError("this UNet was exported at fixed batch \(fixed) ("
                + (fixed == 2 ? "guidance > 1, CFG" : "no guidance") + "); guidance \(pyFloat(guidance)) needs batch "
                + "\(cfg ? 2 : 1): use guidance " + (fixed == 2 ? "> 1" : "<= 1") + ", re-export with a matching "
                + "--guidance, or the onnx backend")
        }
    }

    public override func step(_ run: Denoise, _ i: Int, _ t: Double, _ sample: Tensor, _ state: PolicyState) throws -> Tensor {
        let cfg = run.guidance > 1.0
        let out = try run.call(UNET, unetFeeds(cfg ? .concat([sample, sample]) : sample, t, run.hidden))
        return cfg ? cfgCombine(out["out_sample"]!, run.guidance) : out["out_sample"]!
    }
}
