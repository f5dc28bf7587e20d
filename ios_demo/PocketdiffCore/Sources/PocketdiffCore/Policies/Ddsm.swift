// Mirrors pocketdiff/runtime/policies/ddsm.py: a per-step UNet width (DDSM). Step i runs the UNet of width
// widths[i], each width its own role (`unet` full width, `unet_w625` width 0.625, ...), guided as Guided.swift.
// The manifest's sampler.params.widths holds one width per step; another step count is refused before any model runs.
import Foundation

public let WIDTH_STEPS = 8  // widths are multiples of 1/8

/// The UNet role of a width: `unet` at 1.0, else `unet_w` + the width in thousandths (`unet_w625`).
public func widthRole(_ width: Double) -> String {
    width == 1.0 ? UNET : "unet_w" + String(format: "%03d", Int((width * 1000).rounded(.toNearestOrEven)))
}

public let WIDTH_ROLES = (1..<WIDTH_STEPS).map { widthRole(Double($0) / Double(WIDTH_STEPS)) }

func checkWidth(_ width: JSON) throws -> Double {
    // Fraction(width).limit_denominator(1000) * 8 must be whole: width * 8 an integer (to rounding)
    guard let w = width.numberValue, w > 0, w <= 1, abs(w * 8 - (w * 8).rounded()) < 1e-9 else {
        throw PocketdiffError("sampler policy 'ddsm': width \(width.repr) is not a multiple of 1/8 in (0, 1]")
    }
    return w
}

public final class DDSMPolicy: GuidedPolicy {
    public override class var policyName: String { "ddsm" }
    public override class var ROLES: [String] { [UNET] + WIDTH_ROLES }
    public override class var PARAMS: [(String, ParamKind, JSON)] { [("widths", .list, .array([]))] }
    var widths: [Double] = []

    public override func validate() throws {
        let list = params["widths"]!.arrayValue!
        if list.isEmpty { throw PocketdiffError("sampler policy 'ddsm' needs params.widths: one UNet width per step") }
        widths = try list.map(checkWidth)
        params["widths"] = .array(widths.map(JSON.double))
    }

    public override func roles() -> [String] {
        var seen: [String] = []
        for role in widths.map(widthRole) where !seen.contains(role) { seen.append(role) }
        return seen
    }

    public override func fixedSteps() -> Int? { widths.count }

    public override func begin(_ run: Denoise) throws -> PolicyState {
        let n = run.timesteps.count
        if n != widths.count {
            throw PocketdiffError("the ddsm schedule has \(widths.count) widths, one per step, so it runs \(widths.count) "
                                  + "steps; \(n) were asked for")
        }
        return try guidanceState(run)
    }

    public override func step(_ run: Denoise, _ i: Int, _ t: Double, _ sample: Tensor, _ state: PolicyState) throws -> Tensor {
        try guidedCall(run, widthRole(widths[i]), t, sample, state).0
    }
}
