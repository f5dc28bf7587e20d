// The Swift port against a bundle's test_vectors.json (docs/ports.md): every check of runtime/conformance.py,
// run by the library's `runChecks` (Conformance.swift), whose replay check drives the real RuntimePipeline loop
// and policy on ReplaySessions. The bundle: $POCKETDIFF_BUNDLE, else the repo's toy student bundle found from this
// file's path; $POCKETDIFF_TRUSTED_KEY (a public key file) adds the signature check. A check the vectors cannot
// support (an older format, a tensor too large to store) is skipped, as the runners report "not run".
import CryptoKit
import XCTest
@testable import PocketdiffCore

func bundleURL() -> URL {
    if let env = ProcessInfo.processInfo.environment["POCKETDIFF_BUNDLE"], !env.isEmpty {
        return URL(fileURLWithPath: env)
    }
    var url = URL(fileURLWithPath: #filePath)  // ios_demo/PocketdiffCore/Tests/PocketdiffCoreTests/this file
    for _ in 0..<5 { url.deleteLastPathComponent() }
    return url.appendingPathComponent("pocketdiff/toyworld/assets/student")
}

final class ConformanceTests: XCTestCase {
    static let checks: [CheckResult] = {
        let env = ProcessInfo.processInfo.environment["POCKETDIFF_TRUSTED_KEY"]
        let key = env.flatMap { try? loadPublicKey(URL(fileURLWithPath: $0)) }
        return runChecks(bundleURL(), trustedKey: key)
    }()

    /// Assert every check whose name matches passed; skip when all of them were not run (or none exists).
    func expectPassed(_ matching: (String) -> Bool, _ what: String) throws {
        let found = Self.checks.filter { matching($0.name) }
        let run = found.filter { $0.status != NOT_RUN }
        if run.isEmpty { throw XCTSkip("\(what): not run (\(found.map(\.detail).joined(separator: "; ")))") }
        for c in run { XCTAssertEqual(c.status, PASSED, "\(c.name): \(c.detail)") }
    }

    func testManifestAndEveryFileChecksum() throws { try expectPassed({ $0 == "manifest" }, "manifest") }
    func testSignatureWhenAKeyIsGiven() throws { try expectPassed({ $0 == "signature" }, "signature") }
    func testTokenIds() throws { try expectPassed({ $0 == "tokenizer" }, "tokenizer") }
    func testRNGDraws() throws { try expectPassed({ $0 == "rng" }, "rng") }
    func testTimesteps() throws { try expectPassed({ $0 == "timesteps" }, "timesteps") }
    func testEverySchedulerRecord() throws { try expectPassed({ $0.hasPrefix("scheduler:") }, "schedulers") }
    func testPolicyReplayOnTheRealLoop() throws { try expectPassed({ $0.hasPrefix("policy:") }, "policy replay") }
    func testStepBudgetRule() throws { try expectPassed({ $0 == "step_budget" }, "step_budget") }

    func testTokenizerSteps() {
        XCTAssertEqual(cleanText("  Hello\tWORLD\u{0}  Ça  "), "hello world ça")
        XCTAssertEqual(cleanText("猫cat"), "猫 cat")
        XCTAssertEqual(preTokenize("hello, world! it's 123"), ["hello", ",", "world", "!", "it", "'s", "1", "2", "3"])
        XCTAssertEqual(preTokenize("<|startoftext|>a"), ["<|startoftext|>", "a"])
    }

    func testRNGMatchesNumPysFirstDraws() throws {
        // numpy.random.RandomState(0).standard_normal(3)
        let got = try referenceNormals(seed: 0, count: 3)
        for (g, w) in zip(got, [1.764052345967664, 0.4001572083672233, 0.9787379841057392]) { XCTAssertEqual(g, w, accuracy: 1e-15) }
        XCTAssertThrowsError(try checkSeed(-1)) { XCTAssertEqual(($0 as? PocketdiffError)?.message, "seed must be an integer in [0, 4294967295], got -1") }
    }

    func testToUInt8RoundsAsDiffusers() {
        let out = toUInt8(Tensor(shape: [1, 3, 1, 2], data: [-1, 1, 0, 2, -2, 0.5]))
        XCTAssertEqual(out.pixels, [0, 128, 0, 255, 255, 191])
    }
}
