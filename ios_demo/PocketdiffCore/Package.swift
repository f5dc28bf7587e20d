// swift-tools-version: 5.9
// PocketdiffCore: the Swift port of pocketdiff's reference runtime (pocketdiff/runtime/), file by file.
//
// apple/ml-stable-diffusion is a dependency of the *test target only*: the tests cross-check our tokenizer
// against its BPETokenizer on plain prompts. The library does not use it (README.md: why our own loop).
import PackageDescription

let package = Package(
    name: "PocketdiffCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "PocketdiffCore", targets: ["PocketdiffCore"]),
        .executable(name: "pocketdiff-conformance", targets: ["PocketdiffConformance"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/ml-stable-diffusion", from: "1.1.0"),
    ],
    targets: [
        .target(name: "PocketdiffCore", path: "Sources/PocketdiffCore"),
        // docs/ports.md's runner: `conformance BUNDLE [--trusted-key FILE]` and `verify BUNDLE [--trusted-key FILE]`
        .executableTarget(name: "PocketdiffConformance", dependencies: ["PocketdiffCore"],
                          path: "Sources/PocketdiffConformance"),
        .testTarget(
            name: "PocketdiffCoreTests",
            dependencies: [
                "PocketdiffCore",
                .product(name: "StableDiffusion", package: "ml-stable-diffusion"),
            ],
            path: "Tests/PocketdiffCoreTests"),
    ]
)
