// Mirrors pocketdiff/runtime/policies/clockwork.py: reuse the UNet's low-resolution features across steps.
// A full step runs unet_cw_full (the whole UNet, plus lowres_out kept in the state); a light step runs
// unet_cw_light, the outer UNet with the trained adaptor fed the cache (lowres_cache). Guided as Guided.swift.
// The clock: first and last steps full; between them step i is light when i % period != 0, or, when
// light_steps lists indices, exactly those (a list naming the first or last step, or past the run, is refused).
import Foundation

public let CW_FULL = "unet_cw_full", CW_LIGHT = "unet_cw_light"
public let CACHE_OUT = "lowres_out", CACHE_IN = "lowres_cache"

/// One flag per step, true where the step is light.
public func clockSchedule(_ steps: Int, period: Int = 1, lightSteps: [Int] = []) throws -> [Bool] {
    if !lightSteps.isEmpty {
        if let bad = lightSteps.first(where: { !(0 < $0 && $0 < steps - 1) }) {
            throw PocketdiffError("clockwork light_steps \(JSON.array(lightSteps.map(JSON.int)).repr): step \(bad) is not "
                                  + "between the first (0) and the last (\(steps - 1)) of \(steps) steps, which are always full")
        }
        return (0..<steps).map { lightSteps.contains($0) }
    }
    return (0..<steps).map { 0 < $0 && $0 < steps - 1 && $0 % period != 0 }
}

public final class ClockworkPolicy: GuidedPolicy {
    public override class var policyName: String { "clockwork" }
    public override class var ROLES: [String] { [CW_FULL, CW_LIGHT] }
    public override class var PARAMS: [(String, ParamKind, JSON)] { [("period", .int, .int(2)), ("light_steps", .list, .array([]))] }
    var period: Int { params["period"]!.intValue! }
    var lightSteps: [Int] { params["light_steps"]!.arrayValue!.compactMap(\.intValue) }

    public override func validate() throws {
        if period < 1 { throw PocketdiffError("sampler policy 'clockwork': period must be >= 1, got \(period)") }
        let steps = params["light_steps"]!.arrayValue!
        if steps.contains(where: { $0.intValue == nil }) || Set(steps.compactMap(\.intValue)).count != steps.count {
            throw PocketdiffError("sampler policy 'clockwork': light_steps must be distinct step indices, got "
                                  + JSON.array(steps).repr)
        }
        params["light_steps"] = .array(steps.compactMap(\.intValue).sorted().map(JSON.int))
    }

    public override func roles() -> [String] { !lightSteps.isEmpty || period > 1 ? [CW_FULL, CW_LIGHT] : [CW_FULL] }

    func schedule(_ steps: Int) throws -> [Bool] { try clockSchedule(steps, period: period, lightSteps: lightSteps) }

    public override func begin(_ run: Denoise) throws -> PolicyState {
        let state = try guidanceState(run)
        state.light = try schedule(run.timesteps.count)
        state.cache = nil
        return state
    }

    public override func step(_ run: Denoise, _ i: Int, _ t: Double, _ sample: Tensor, _ state: PolicyState) throws -> Tensor {
        if state.light[i] {
            return try guidedCall(run, CW_LIGHT, t, sample, state, extra: [CACHE_IN: state.cache!]).0
        }
        let (out, raw) = try guidedCall(run, CW_FULL, t, sample, state)
        state.cache = raw[CACHE_OUT]
        return out
    }
}
