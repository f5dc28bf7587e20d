// The one use of apple/ml-stable-diffusion: its BPETokenizer (space split only, no byte encoding or cleaning)
// reads the same vocab.json/merges.txt and must agree with ours on prompts of plain lowercase words. (Kept in its
// own file: StableDiffusion exports names, like Scheduler, that PocketdiffCore has too.)
import PocketdiffCore
import StableDiffusion
import XCTest

final class AppleTokenizerTests: XCTestCase {
    func testTokenizerAgreesWithApplesOnPlainPrompts() throws {
        let bundle = try PocketdiffBundle.load(bundleURL(), verify: false)
        let ours = try bundle.tokenizer()
        let t = bundle.manifest["tokenizer"]!
        let apple = try BPETokenizer(mergesAt: try bundle.file(t["merges"]!.stringValue!),
                                     vocabularyAt: try bundle.file(t["vocab"]!.stringValue!))
        for prompt in ["a small red circle in the top left on a grey background", "a photo of an astronaut riding a horse"] {
            let mine = try ours(prompt)
            let theirs = apple.tokenize(input: prompt).tokenIDs
            XCTAssertEqual(Array(mine.inputIds[1..<(mine.nTokens - 1)]), Array(theirs.dropFirst().dropLast()), prompt)
        }
    }

}
