// Mirrors pocketdiff/runtime/sessions.py: a Session runs one exported component on named inputs and returns
// named outputs. The sampler loop knows only this protocol; CoreMLSession is the app's backend, the tests'
// ReplaySession answers with recorded outputs.
//
// The loop speaks the common (optimum) names and layouts (input_ids, sample, timestep [], encoder_hidden_states
// [B,77,D], timestep_cond, latent_sample -> last_hidden_state, out_sample, sample). The bundle's coreml/ packages
// use apple's layout (export/coreml.py, docs/design/coreml_io.md); CoreMLSession maps one to the other exactly as
// export/coreml.py's to_apple_feeds/from_apple_outputs do.
import CoreML
import Foundation

/// A dense row-major Float32 tensor (ids and timesteps too: every value the loop feeds is exact in Float32).
public struct Tensor: Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count, "tensor data does not fill shape \(shape)")
        self.shape = shape
        self.data = data
    }

    /// A 0-d tensor (the UNet's timestep).
    public static func scalar(_ v: Float) -> Tensor { Tensor(shape: [], data: [v]) }

    public var count: Int { data.count }
    /// The leading dimension (np.shape(x)[0]), 1 for a 0-d tensor.
    public var batch: Int { shape.first ?? 1 }

    /// Rows [from, to) of the leading dimension.
    public func rows(_ from: Int, _ to: Int) -> Tensor {
        let per = shape.dropFirst().reduce(1, *)
        return Tensor(shape: [to - from] + shape.dropFirst(), data: Array(data[(from * per)..<(to * per)]))
    }

    /// np.concatenate along axis 0.
    public static func concat(_ parts: [Tensor]) -> Tensor {
        Tensor(shape: [parts.map(\.batch).reduce(0, +)] + parts[0].shape.dropFirst(), data: parts.flatMap(\.data))
    }

    public func map(_ f: (Float) -> Float) -> Tensor { Tensor(shape: shape, data: data.map(f)) }

    public func zip(_ other: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
        Tensor(shape: shape, data: Swift.zip(data, other.data).map(f))
    }

    public var meanAbs: Double { data.reduce(0.0) { $0 + Double(abs($1)) } / Double(max(count, 1)) }
}

/// One dimension of a declared shape: a number, or a symbol (the batch).
public enum Dim: Equatable {
    case fixed(Int)
    case symbol(String)
    public var value: Int? { if case .fixed(let n) = self { return n } else { return nil } }
}

/// One named tensor of a component's interface.
public struct TensorSpec: Equatable {
    public let name: String
    public let shape: [Dim]
    public let dtype: String

    public init(name: String, shape: [Dim], dtype: String) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
    }

    /// From a manifest tensor spec (already checked by Manifest.swift).
    public init(json: JSON) {
        name = json["name"]?.stringValue ?? ""
        shape = (json["shape"]?.arrayValue ?? []).map { $0.intValue.map(Dim.fixed) ?? .symbol($0.stringValue ?? "?") }
        dtype = json["dtype"]?.stringValue ?? "float32"
    }
}

/// What the sampler loop needs of a component, whatever runs it.
public protocol Session: AnyObject {
    var inputs: [TensorSpec] { get }
    var outputs: [TensorSpec] { get }
    /// The only batch a static-shape program takes (nil: any batch).
    var fixedBatch: Int? { get }
    /// Named inputs (every declared input) -> named outputs.
    func run(_ feeds: [String: Tensor]) throws -> [String: Tensor]
}

/// The batch of a static-shape interface: the first input's leading dim when it is a number.
public func firstDim(_ specs: [TensorSpec]) -> Int? { specs.first?.shape.first?.value }

func checkFeeds(_ path: String, _ specs: [TensorSpec], _ feeds: [String: Tensor]) throws {
    let missing = specs.map(\.name).filter { feeds[$0] == nil }.sorted()
    if !missing.isEmpty {
        throw PocketdiffError("\(path): missing inputs \(JSON.array(missing.map(JSON.string)).repr)")
    }
}

// MARK: - Core ML

let SWIFT_DECODER_SCALE: Float = 0.18215  // apple's Swift pipeline divides latents by this before VAEDecoder

private func isSegment(_ role: String) -> Bool { role == SEG_IN || SEG_ROLES.contains(role) || EXIT_ROLES.contains(role) }

/// [B,77,D] -> [B,D,1,77] (apple's toHiddenStates).
func toAppleHidden(_ x: Tensor) -> Tensor {
    let (b, k, d) = (x.shape[0], x.shape[1], x.shape[2])
    var out = [Float](repeating: 0, count: x.count)
    for i in 0..<b { for j in 0..<k { for c in 0..<d { out[(i * d + c) * k + j] = x.data[(i * k + j) * d + c] } } }
    return Tensor(shape: [b, d, 1, k], data: out)
}

/// A bundle's coreml/ component, compiled at load, behind the common interface.
public final class CoreMLSession: Session {
    public let role: String
    public let inputs: [TensorSpec]  // the common names and layouts the loop feeds
    public let outputs: [TensorSpec]
    public let path: String
    let model: MLModel
    let scalingFactor: Float

    /// The common-layout interface of a coreml component's apple-layout specs (its names, [U] timestep -> [],
    /// [U,D,1,77] states -> [U,77,D]).
    public static func logicalSpecs(role: String, inputs: [TensorSpec], outputs: [TensorSpec])
        -> (inputs: [TensorSpec], outputs: [TensorSpec]) {
        func input(_ s: TensorSpec) -> TensorSpec {
            switch s.name {
            case "timestep": return TensorSpec(name: s.name, shape: [], dtype: s.dtype)
            case "encoder_hidden_states" where s.shape.count == 4:
                return TensorSpec(name: s.name, shape: [s.shape[0], s.shape[3], s.shape[1]], dtype: s.dtype)
            case "z": return TensorSpec(name: "latent_sample", shape: s.shape, dtype: s.dtype)
            case "input_ids": return TensorSpec(name: s.name, shape: s.shape, dtype: "int64")
            default: return s
            }
        }
        let names = ["pooled_outputs": "pooler_output", "noise_pred": "out_sample", "image": "sample"]
        let outs = outputs.map { TensorSpec(name: names[$0.name] ?? $0.name, shape: $0.shape, dtype: $0.dtype) }
        if role == STEP_BUDGET { return (inputs, outputs) }
        return (inputs.map(input), isSegment(role) ? outputs : outs)
    }

    /// Compile the component's .mlpackage (MLModel.compileModel) and load it.
    public static func load(role: String, url: URL, inputs: [TensorSpec], outputs: [TensorSpec], scalingFactor: Float,
                            configuration: MLModelConfiguration = MLModelConfiguration()) async throws -> CoreMLSession {
        let model: MLModel
        do {
            let compiled = try await MLModel.compileModel(at: url)
            model = try MLModel(contentsOf: compiled, configuration: configuration)
        } catch {
            throw PocketdiffError("cannot load Core ML model \(url.path): \(error.localizedDescription)")
        }
        return CoreMLSession(role: role, model: model, path: url.path, apple: (inputs, outputs), scalingFactor: scalingFactor)
    }

    init(role: String, model: MLModel, path: String, apple: (inputs: [TensorSpec], outputs: [TensorSpec]),
         scalingFactor: Float) {
        self.role = role
        self.model = model
        self.path = path
        self.scalingFactor = scalingFactor
        let specs = Self.logicalSpecs(role: role, inputs: apple.inputs, outputs: apple.outputs)
        inputs = specs.inputs
        outputs = specs.outputs
    }

    public var fixedBatch: Int? { firstDim(inputs) }

    /// export/coreml.py to_apple_feeds.
    func toAppleFeeds(_ feeds: [String: Tensor]) -> [String: Tensor] {
        if role == TEXT_ENCODER || role == STEP_BUDGET { return feeds }  // (ids are Float32 already)
        if role == VAE_DECODER {
            let ratio = scalingFactor / SWIFT_DECODER_SCALE
            return ["z": feeds["latent_sample"]!.map { $0 * ratio }]
        }
        let b = feeds.first { $0.key != "timestep" }?.value.batch ?? 1
        var out: [String: Tensor] = [:]
        for (name, x) in feeds {
            switch name {
            case "timestep": out[name] = Tensor(shape: [b], data: Array(repeating: x.data[0], count: b))
            case "encoder_hidden_states": out[name] = toAppleHidden(x)
            default: out[name] = x
            }
        }
        return out
    }

    public func run(_ feeds: [String: Tensor]) throws -> [String: Tensor] {
        try checkFeeds(path, inputs, feeds)
        var dict: [String: Any] = [:]
        for (name, x) in toAppleFeeds(feeds) {
            dict[name] = MLMultiArray(MLShapedArray<Float32>(scalars: x.data, shape: x.shape))
        }
        let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: dict))
        // export/coreml.py from_apple_outputs: renamed to the common names; others dropped (the unet's).
        let names: [String: String]? = isSegment(role) || role == STEP_BUDGET ? nil
            : (role == TEXT_ENCODER ? ["last_hidden_state": "last_hidden_state", "pooled_outputs": "pooler_output"]
               : role == VAE_DECODER ? ["image": "sample"] : ["noise_pred": "out_sample", CACHE_OUT: CACHE_OUT])
        var out: [String: Tensor] = [:]
        for name in result.featureNames {
            guard let array = result.featureValue(for: name)?.multiArrayValue else { continue }
            guard let key = names == nil ? name : names![name] else { continue }
            // (the concatenating initializer converts fp16 outputs to Float32, as apple's Unet.swift does)
            let fp32 = MLShapedArray<Float32>(MLMultiArray(concatenating: [array], axis: 0, dataType: .float32))
            out[key] = Tensor(shape: fp32.shape, data: fp32.scalars)
        }
        return out
    }
}
