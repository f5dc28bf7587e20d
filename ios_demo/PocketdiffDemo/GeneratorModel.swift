// The view model: bundle loading (verified before any model is compiled), the generation on a background task,
// progress and cancellation through the loop's progress handler, per-stage timings.
import CoreGraphics
import CoreML
import CryptoKit
import Foundation
import PocketdiffCore

extension RuntimePipeline: @unchecked Sendable {}  // used by one generation at a time (the UI disables Generate)

/// Set from the main actor, read by the loop's progress handler on the generation's thread.
final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set(_ v: Bool) { lock.withLock { value = v } }
}

@MainActor
final class GeneratorModel: ObservableObject {
    @Published var prompt = "a small red circle in the top left on a grey background"
    @Published var negativePrompt = ""
    @Published var steps = 4
    @Published var guidance = 2.0
    @Published var seed = 0
    @Published var progress = 0.0
    @Published var image: CGImage?
    @Published var timings: [(String, Double)] = []
    @Published var status = "No bundle loaded"
    @Published var running = false
    @Published var loaded = false

    private var pipeline: RuntimePipeline?
    private let cancelFlag = CancelFlag()

    /// The first folder among the app's resources that holds a manifest.json (the bundle added as a folder reference).
    func loadBundled() async {
        guard !loaded, let resources = Bundle.main.resourceURL,
              let items = try? FileManager.default.contentsOfDirectory(at: resources, includingPropertiesForKeys: nil),
              let folder = items.first(where: { FileManager.default.fileExists(atPath: $0.appendingPathComponent(MANIFEST).path) })
        else { return }
        await load(folder)
    }

    /// A trusted Ed25519 public key shipped with the app (trusted_key.pub), if any: then unsigned bundles are refused.
    private var trustedKey: Curve25519.Signing.PublicKey? {
        get throws { try Bundle.main.url(forResource: "trusted_key", withExtension: "pub").map(loadPublicKey) }
    }

    func load(_ url: URL) async {
        let scoped = url.startAccessingSecurityScopedResource()  // a folder from the document picker
        defer { if scoped { url.stopAccessingSecurityScopedResource() } }
        status = "Verifying and compiling \(url.lastPathComponent)…"
        loaded = false
        do {
            let key = try trustedKey
            let (pipeline, bundle) = try await RuntimePipeline.fromBundle(url, trustedKey: key)
            self.pipeline = pipeline
            let defaults = bundle.manifest["defaults"]!
            steps = defaults["steps"]!.intValue!
            guidance = defaults["guidance"]!.numberValue!
            loaded = true
            status = "Loaded \(url.lastPathComponent): \(pipeline.policy.name), "
                + (key == nil ? "unverified (no trusted key)" : "signed by \(bundle.signedBy!.prefix(16))…")
        } catch {
            status = "Refused: \(error.localizedDescription)"
        }
    }

    func generate() {
        guard let pipeline, !running else { return }
        let (text, negative, count, scale, seedValue) = (self.prompt, self.negativePrompt, self.steps, self.guidance, self.seed)
        let flag = cancelFlag
        flag.set(false)
        running = true
        progress = 0
        status = "Generating…"
        Task.detached(priority: .userInitiated) {
            let outcome: Result<GenerationResult, Error> = Result {
                try pipeline.generate(text, steps: .count(count), guidance: scale, seed: seedValue, negativePrompt: negative,
                                      progress: { done, total in
                                          Task { @MainActor in self.progress = Double(done) / Double(total) }
                                          return !flag.isSet
                                      })
            }
            await MainActor.run { self.finish(outcome) }
        }
    }

    func cancel() { cancelFlag.set(true) }

    private func finish(_ outcome: Result<GenerationResult, Error>) {
        running = false
        switch outcome {
        case .success(let result):
            image = result.cgImage
            timings = result.timings
            progress = 1
            status = "Done: \(result.steps) steps, " + result.callCounts().sorted { $0.key < $1.key }
                .map { "\($0.value)× \($0.key)" }.joined(separator: ", ")
        case .failure(let error as Cancelled):
            status = error.message
        case .failure(let error):
            status = "Error: \(error.localizedDescription)"
        }
    }
}
