// Mirrors pocketdiff/runtime/policies/guidance_embedded.py: one batch-1 UNet pass per step on the prompt alone, the
// guidance scale fed as timestep_cond = guidanceScaleEmbedding(w - 1) (a distill-steps --guidance-embed student).
// No negative prompt, no CFG combination. apple's StableDiffusion pipeline has no such input: one reason our loop.
import Foundation

public let W_INPUT = "timestep_cond"

/// [1, dim] Float32: diffusers' get_guidance_scale_embedding of one w (the policy passes guidance - 1).
public func guidanceScaleEmbedding(_ w: Double, _ dim: Int) -> Tensor {
    let half = dim / 2
    let c = Float(-(log(10000.0) / Double(half - 1)))
    let freq = (0..<half).map { exp(Float($0) * c) }
    let scale = Float(w * 1000.0)
    let emb = freq.map { scale * $0 }
    var data = emb.map { sin($0) } + emb.map { cos($0) }
    if dim % 2 == 1 { data.append(0) }
    return Tensor(shape: [1, dim], data: data)
}

/// The width of a UNet session's timestep_cond input.
func embedDim(_ session: Session) throws -> Int {
    guard let spec = session.inputs.first(where: { $0.name == W_INPUT }), let width = spec.shape.last?.value else {
        let path = (session as? CoreMLSession)?.path ?? String(describing: type(of: session))
        throw PocketdiffError("sampler policy 'guidance_embedded' needs a UNet with a \(W_INPUT) input of fixed width; "
                              + "\(path) has inputs \(JSON.array(session.inputs.map { .string($0.name) }).repr)")
    }
    return width
}

public final class GuidanceEmbeddedPolicy: StepPolicy {
    public override class var policyName: String { "guidance_embedded" }

    public override func check(_ sessions: [String: Session], _ guidance: Double) throws {
        _ = try embedDim(sessions[UNET]!)
        if let fixed = sessions[UNET]!.fixedBatch, fixed != 1 {
            throw PocketdiffError("a guidance-embedded UNet runs at batch 1; this one was exported at fixed batch \(fixed)")
        }
    }

    public override func begin(_ run: Denoise) throws -> PolicyState {
        let state = PolicyState()
        state.w = guidanceScaleEmbedding(run.guidance - 1, try embedDim(run.sessions[UNET]!))
        return state
    }

    public override func step(_ run: Denoise, _ i: Int, _ t: Double, _ sample: Tensor, _ state: PolicyState) throws -> Tensor {
        try run.call(UNET, unetFeeds(sample, t, run.hidden, extra: [W_INPUT: state.w!]))["out_sample"]!
    }
}
