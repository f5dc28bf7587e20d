// Mirrors pocketdiff/runtime/tokenizer.py: the CLIP byte-level BPE tokenizer, step by step as its docstring says:
//
// 0. split out literal <|startoftext|> / <|endoftext|>; steps 1-4 run on each chunk between them;
// 1. clean (BERT BasicTokenizer: drop NUL, U+FFFD and C* controls except tab/newline/CR, whitespace -> space,
//    spaces around CJK ideographs, NFC, split on whitespace, lowercase each word, join with single spaces);
// 2. pre-tokenise with CLIP's pattern as a scanner over Unicode categories;
// 3. UTF-8 bytes through GPT-2's bytes_to_unicode, `</w>` on each piece's last symbol;
// 4. BPE: merge the adjacent pair of lowest rank until none is in merges.txt;
// 5. BOS + ids + EOS, padded with the pad token to max_length (77); longer is an error unless truncate.
//
// Everything works on Unicode scalars (Python's code points), never on Swift Characters (grapheme clusters).
// apple/ml-stable-diffusion's BPETokenizer is not used: it splits on spaces only (no punctuation split, no byte
// encoding, no cleaning), so "cat," or "café" would get other ids than Python's.
import Foundation

public let BOS = "<|startoftext|>"
public let EOS = "<|endoftext|>"
public let MAX_LENGTH = 77
private let contractions = ["s", "t", "re", "ve", "m", "ll", "d"]
private let cjkRanges: [ClosedRange<UInt32>] = [
    0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F,
    0x2B740...0x2B81F, 0x2B820...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F,
]

/// GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters.
public let bytesToUnicode: [String] = {
    var bs = Array(UInt32(33)...126) + Array(UInt32(0xA1)...0xAC) + Array(UInt32(0xAE)...0xFF)
    var cs = bs
    var n: UInt32 = 0
    for b in UInt32(0)..<256 where !bs.contains(b) {
        bs.append(b)
        cs.append(256 + n)
        n += 1
    }
    var table = [String](repeating: "", count: 256)
    for (b, c) in zip(bs, cs) { table[Int(b)] = String(Unicode.Scalar(c)!) }
    return table
}()

private func category(_ ch: Unicode.Scalar) -> Unicode.GeneralCategory { ch.properties.generalCategory }

private func isWhitespace(_ ch: Unicode.Scalar) -> Bool {
    " \t\n\r".unicodeScalars.contains(ch) || category(ch) == .spaceSeparator
}

private func isControl(_ ch: Unicode.Scalar) -> Bool {
    if "\t\n\r".unicodeScalars.contains(ch) { return false }
    switch category(ch) {
    case .control, .format, .surrogate, .privateUse, .unassigned: return true
    default: return false
    }
}

private func isCJK(_ ch: Unicode.Scalar) -> Bool { cjkRanges.contains { $0.contains(ch.value) } }

func isLetter(_ ch: Unicode.Scalar) -> Bool {
    switch category(ch) {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
    default: return false
    }
}

func isNumber(_ ch: Unicode.Scalar) -> Bool {
    switch category(ch) {
    case .decimalNumber, .letterNumber, .otherNumber: return true
    default: return false
    }
}

/// Python's `str.isspace()` / `str.split()` separators (Zs, or bidi class WS/B/S).
func isPySpace(_ ch: Unicode.Scalar) -> Bool {
    switch ch.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default: return category(ch) == .spaceSeparator
    }
}

/// Step 1: BasicTokenizer normalisation; lowercased words joined by single spaces.
public func cleanText(_ text: String) -> String {
    var out = String.UnicodeScalarView()
    for ch in text.unicodeScalars {
        if ch.value == 0 || ch.value == 0xFFFD || isControl(ch) { continue }
        if isWhitespace(ch) {
            out.append(" ")
        } else if isCJK(ch) {
            out.append(" "); out.append(ch); out.append(" ")
        } else {
            out.append(ch)
        }
    }
    let nfc = String(out).precomposedStringWithCanonicalMapping
    let words = nfc.unicodeScalars.split(whereSeparator: isPySpace).map { String(String.UnicodeScalarView($0)) }
    return words.map { $0.lowercased() }.joined(separator: " ")
}

private func startsWith(_ text: [Unicode.Scalar], _ prefix: [Unicode.Scalar], at i: Int) -> Bool {
    i + prefix.count <= text.count && Array(text[i..<(i + prefix.count)]) == prefix
}

/// Step 2: CLIP's regex as a scanner. `text` is the output of `cleanText`.
public func preTokenize(_ text: String) -> [String] {
    let s = Array(text.unicodeScalars)
    let specials = [BOS, EOS].map { Array($0.unicodeScalars) }
    var pieces: [String] = []
    func piece(_ a: Int, _ b: Int) -> String { String(String.UnicodeScalarView(s[a..<b])) }
    var i = 0
    let n = s.count
    while i < n {
        let ch = s[i]
        if let special = specials.first(where: { startsWith(s, $0, at: i) }) {
            pieces.append(String(String.UnicodeScalarView(special)))
            i += special.count
            continue
        }
        if ch == "'" {
            // text[i+1 : i+1+len(c)].lower() == c (the text is lowercased already)
            if let c = contractions.first(where: { startsWith(s, Array($0.unicodeScalars), at: i + 1) }) {
                pieces.append(piece(i, i + 1 + c.unicodeScalars.count))
                i += 1 + c.unicodeScalars.count
                continue
            }
        }
        var j = i + 1
        if isLetter(ch) {
            while j < n && isLetter(s[j]) { j += 1 }
        } else if isNumber(ch) {
            j = i + 1
        } else if isPySpace(ch) {
            i += 1
            continue
        } else {
            while j < n && !(isPySpace(s[j]) || isLetter(s[j]) || isNumber(s[j])) { j += 1 }
        }
        pieces.append(piece(i, j))
        i = j
    }
    return pieces
}

public struct TokenizerOutput: Equatable {
    public let inputIds: [Int]  // exactly max_length ids
    public let nTokens: Int  // tokens before padding, including BOS and EOS
    public let truncated: Bool
}

/// Loads vocab.json + merges.txt (CLIP format) and encodes prompts to 77 ids.
public final class CLIPBPETokenizer {
    public let encoder: [String: Int]
    let bpeRanks: [String: Int]  // "a b" -> rank (symbols never hold a space: byte 0x20 maps to U+0120)
    public let bosId: Int, eosId: Int, padId: Int
    private var cache: [String: [String]] = [BOS: [BOS], EOS: [EOS]]

    public init(vocab: [String: Int], merges: [(String, String)], padToken: String = EOS) throws {
        for tok in [BOS, EOS, padToken] where vocab[tok] == nil {
            throw PocketdiffError("tokenizer vocab has no \(pyString(tok)) token")
        }
        encoder = vocab
        var ranks: [String: Int] = [:]
        for (i, pair) in merges.enumerated() { ranks["\(pair.0) \(pair.1)"] = i }  // a repeated pair: its last rank
        bpeRanks = ranks
        bosId = vocab[BOS]!
        eosId = vocab[EOS]!
        padId = vocab[padToken]!
    }

    /// From the tokenizer's files, each checked as tokenizer.py's from_files does (one error naming the file).
    public static func fromFiles(vocab vocabFile: URL, merges mergesFile: URL, special specialFile: URL? = nil) throws
        -> CLIPBPETokenizer {
        let folder = vocabFile.deletingLastPathComponent().path
        let vocab: JSON, lines: [String], entry: JSON
        do {
            vocab = try JSON.parse(Data(contentsOf: vocabFile))
            guard let text = String(data: try Data(contentsOf: mergesFile), encoding: .utf8) else {
                throw PocketdiffError("merges.txt is not UTF-8")
            }
            lines = text.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "\n")
            if let specialFile {
                let special = try JSON.parse(Data(contentsOf: specialFile))
                guard special.objectValue != nil else { throw PocketdiffError("special_tokens_map.json is not an object") }
                entry = special["pad_token"] ?? .string(EOS)
            } else {
                entry = .string(EOS)
            }
        } catch {
            throw PocketdiffError("cannot read the tokenizer (\(folder)): \(error.localizedDescription)")
        }
        guard let object = vocab.objectValue else {
            throw PocketdiffError("tokenizer vocab \(vocabFile.path) must be an object of token -> id (an integer >= 0)")
        }
        var ids: [String: Int] = [:]
        for (k, v) in object {
            guard let id = v.intValue, id >= 0 else {
                throw PocketdiffError("tokenizer vocab \(vocabFile.path) must be an object of token -> id (an integer >= 0)")
            }
            ids[k] = id
        }
        // Same slice as transformers: skip the '#version' line, at most 49152 - 256 - 2 merges.
        var merges: [(String, String)] = []
        for line in lines.dropFirst().prefix(49152 - 256 - 2) {
            let parts = line.unicodeScalars.split(whereSeparator: isPySpace).map { String(String.UnicodeScalarView($0)) }
            guard parts.count == 2 else {
                throw PocketdiffError("tokenizer merges \(mergesFile.path): every line after the first must be two symbols")
            }
            merges.append((parts[0], parts[1]))
        }
        let pad = entry.objectValue.map { $0["content"] ?? .null } ?? entry
        guard let padToken = pad.stringValue else {
            throw PocketdiffError("tokenizer \(specialFile?.path ?? "None"): pad_token must be a string, got \(pad.repr)")
        }
        return try CLIPBPETokenizer(vocab: ids, merges: merges, padToken: padToken)
    }

    /// Steps 3-4 for one pre-tokenised piece (already byte-encoded).
    func bpe(_ piece: String) -> [String] {
        if let hit = cache[piece] { return hit }
        var word = piece.unicodeScalars.map { String($0) }
        word[word.count - 1] += "</w>"
        while word.count > 1 {
            var best: (rank: Int, a: String, b: String)? = nil
            for k in 0..<(word.count - 1) {
                if let r = bpeRanks["\(word[k]) \(word[k + 1])"], r < (best?.rank ?? Int.max) {
                    best = (r, word[k], word[k + 1])
                }
            }
            guard let best else { break }
            var merged: [String] = []
            var k = 0
            while k < word.count {
                if k < word.count - 1 && word[k] == best.a && word[k + 1] == best.b {
                    merged.append(word[k] + word[k + 1])
                    k += 2
                } else {
                    merged.append(word[k])
                    k += 1
                }
            }
            word = merged
        }
        cache[piece] = word
        return word
    }

    /// Token ids of `text` without BOS/EOS/padding; literal special tokens split out first.
    public func tokenize(_ text: String) -> [Int] {
        var ids: [Int] = []
        var rest = Array(text.unicodeScalars)
        let specials = [BOS, EOS].map { Array($0.unicodeScalars) }
        while !rest.isEmpty {
            // the earliest literal special token (searched on scalars, as Python's str.find)
            var hit: (pos: Int, token: Int)? = nil
            for pos in 0..<rest.count {
                if let k = specials.firstIndex(where: { startsWith(rest, $0, at: pos) }) { hit = (pos, k); break }
            }
            guard let hit else {
                ids += tokenizeChunk(String(String.UnicodeScalarView(rest)))
                break
            }
            ids += tokenizeChunk(String(String.UnicodeScalarView(rest[..<hit.pos])))
            ids.append(encoder[hit.token == 0 ? BOS : EOS]!)
            rest = Array(rest[(hit.pos + specials[hit.token].count)...])
        }
        return ids
    }

    private func tokenizeChunk(_ text: String) -> [Int] {
        var ids: [Int] = []
        for piece in preTokenize(cleanText(text)) {
            if piece == BOS || piece == EOS {
                ids.append(encoder[piece]!)
                continue
            }
            let encoded = piece.utf8.map { bytesToUnicode[Int($0)] }.joined()
            ids += bpe(encoded).map { encoder[$0] ?? eosId }
        }
        return ids
    }

    /// BOS + ids + EOS padded to `maxLength`. Throws on overflow unless `truncate`.
    public func callAsFunction(_ text: String, maxLength: Int = MAX_LENGTH, truncate: Bool = false) throws
        -> TokenizerOutput {
        var body = tokenize(text)
        let n = body.count + 2
        if n > maxLength && !truncate {
            throw PocketdiffError("prompt is \(n) tokens (with start/end tokens), over the limit of \(maxLength); "
                                  + "shorten it or pass --truncate to cut it")
        }
        body = Array(body.prefix(maxLength - 2))
        let ids = [bosId] + body + [eosId]
        return TokenizerOutput(inputIds: ids + Array(repeating: padId, count: maxLength - ids.count),
                               nTokens: min(n, maxLength), truncated: n > maxLength)
    }
}
