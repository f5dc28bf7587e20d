// Mirrors pocketdiff/runtime/policies/adadiff.py: run the UNet segment by segment and stop at the first exit
// confident enough (AdaDiff). unet_seg_in, then unet_seg_l{L} for L = n-2 .. 0 (the last ends in out_sample), and
// exit heads unet_exit_l{L} (out_sample, uncertainty [B]); tensors between them: hidden / hidden_out, temb,
// skips_l{L}. A step exits at level L when every sample's uncertainty (both CFG halves) is below threshold.
// Guided as Guided.swift. Threshold 0 never exits: the full UNet.
import Foundation

public let MAX_LEVELS = 5
public let SEG_IN = "unet_seg_in"
let HIDDEN = "hidden", HIDDEN_OUT = "hidden_out", TEMB = "temb", UNCERTAINTY = "uncertainty"

public func segRole(_ level: Int) -> String { "unet_seg_l\(level)" }
public func exitRole(_ level: Int) -> String { "unet_exit_l\(level)" }
func skipsName(_ level: Int) -> String { "skips_l\(level)" }

public let SEG_ROLES = (0..<(MAX_LEVELS - 1)).map(segRole)
public let EXIT_ROLES = (1..<MAX_LEVELS).map(exitRole)

/// Per step, the level it stopped at (0: the full UNet ran), read from a generation's call trace.
public func exitLevels(_ trace: [Call], _ steps: Int) -> [Int] {
    (0..<steps).map { i in
        let roles = trace.filter { $0.step == i }.map(\.role)
        if roles.contains(segRole(0)) || roles.isEmpty { return 0 }
        return Int(roles.last { $0.hasPrefix("unet_exit_l") }!.dropFirst("unet_exit_l".count))!
    }
}

public final class AdaDiffPolicy: GuidedPolicy {
    public override class var policyName: String { "adadiff" }
    public override class var ROLES: [String] { [SEG_IN] + SEG_ROLES + EXIT_ROLES }
    public override class var PARAMS: [(String, ParamKind, JSON)] {
        [("levels", .int, .int(3)), ("exits", .list, .array([.int(1)])), ("threshold", .float, .double(0.0)),
         ("calibration", .dict, .object([:]))]
    }
    public override class var dataDependent: Bool { true }
    var levels: Int { params["levels"]!.intValue! }
    var exits: [Int] { params["exits"]!.arrayValue!.compactMap(\.intValue) }

    public override func validate() throws {
        let (n, list, tau) = (levels, params["exits"]!.arrayValue!, params["threshold"]!.numberValue!)
        if !(2...MAX_LEVELS).contains(n) {
            throw PocketdiffError("sampler policy 'adadiff': levels must be in [2, \(MAX_LEVELS)], got \(n)")
        }
        let ints = list.compactMap(\.intValue)
        if list.isEmpty || ints.count != list.count || ints.contains(where: { !(1 <= $0 && $0 < n) }) || Set(ints).count < ints.count {
            throw PocketdiffError("sampler policy 'adadiff': exits must be distinct levels in [1, \(n - 1)], got \(JSON.array(list).repr)")
        }
        if !(0.0...1.0).contains(tau) {
            throw PocketdiffError("sampler policy 'adadiff': threshold must be in [0, 1], got \(pyFloat(tau))")
        }
        params["exits"] = .array(ints.sorted(by: >).map(JSON.int))
    }

    public override func roles() -> [String] {
        [SEG_IN] + stride(from: levels - 2, through: 0, by: -1).map(segRole) + exits.map(exitRole)
    }

    public override func begin(_ run: Denoise) throws -> PolicyState { try guidanceState(run) }

    public override func step(_ run: Denoise, _ i: Int, _ t: Double, _ sample: Tensor, _ state: PolicyState) throws -> Tensor {
        let n = levels, exitSet = Set(exits), tau = Float(params["threshold"]!.numberValue!)
        let carried = try run.call(SEG_IN, guidedFeeds(run, t, sample, state))  // hidden, temb, skips_l0 .. l(n-2)
        var hidden = carried[HIDDEN]!
        for level in stride(from: n - 1, through: 0, by: -1) {
            if level < n - 1 {
                let out = try run.call(segRole(level), [HIDDEN: hidden, skipsName(level): carried[skipsName(level)]!,
                                                        TEMB: carried[TEMB]!, "encoder_hidden_states": run.hidden])
                if level == 0 { return combine(run, out["out_sample"]!, state) }
                hidden = out[HIDDEN_OUT]!
            }
            if exitSet.contains(level) {
                let head = try run.call(exitRole(level), [HIDDEN: hidden, skipsName(0): carried[skipsName(0)]!,
                                                          TEMB: carried[TEMB]!])
                if head[UNCERTAINTY]!.data.max()! < tau { return combine(run, head["out_sample"]!, state) }
            }
        }
        throw PocketdiffError("sampler policy 'adadiff': the segments ended without an output")
    }
}
