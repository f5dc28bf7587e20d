// The Swift port's conformance runner (docs/ports.md), macOS only:
//   swift run --package-path ios_demo/PocketdiffCore pocketdiff-conformance conformance BUNDLE [--trusted-key FILE]
//   swift run --package-path ios_demo/PocketdiffCore pocketdiff-conformance verify BUNDLE [--trusted-key FILE]
// conformance: one JSON object on stdout, exit 0 when nothing failed, else 1. verify: `ok` and exit 0, or one line
// `error: MESSAGE` on stderr and exit 2.
import CryptoKit
import Foundation
import PocketdiffCore

func fail(_ message: String, _ code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(code)
}

var args = Array(CommandLine.arguments.dropFirst())
var keyPath: String? = nil
if let i = args.firstIndex(of: "--trusted-key") {
    guard i + 1 < args.count else { fail("--trusted-key needs a file") }
    keyPath = args[i + 1]
    args.removeSubrange(i...(i + 1))
}
guard args.count == 2, ["conformance", "verify"].contains(args[0]) else {
    fail("usage: pocketdiff-conformance conformance|verify BUNDLE [--trusted-key FILE]")
}
let bundle = URL(fileURLWithPath: args[1])
var key: Curve25519.Signing.PublicKey? = nil
do {
    key = try keyPath.map { try loadPublicKey(URL(fileURLWithPath: $0)) }
} catch {
    fail(error.localizedDescription)
}

if args[0] == "verify" {
    do {
        _ = try PocketdiffBundle.load(bundle, verify: true, trustedKey: key)
        print("ok")
        exit(0)
    } catch {
        fail(error.localizedDescription)
    }
}

let checks = runChecks(bundle, trustedKey: key)
var object: [String: Any] = [:]
for c in checks { object[c.name] = ["status": c.status, "detail": c.detail] }
let out: [String: Any] = ["port": "swift", "bundle": args[1], "checks": object]
let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
print(String(data: data, encoding: .utf8)!)
exit(checks.contains { $0.status == FAILED } ? 1 : 0)
