// Port of pocketdiff/runtime/tokenizer.py: CLIP byte-level BPE from vocab.json + merges.txt, step by step as its
// docstring describes (split out special tokens, clean, pre-tokenise, bytes to symbols, BPE, ids). Text is handled
// as Unicode code points, as Python's str is.
package pocketdiff.core

import java.io.File
import java.text.Normalizer
import java.util.Locale

const val BOS = "<|startoftext|>"
const val EOS = "<|endoftext|>"
const val MAX_LENGTH = 77
private val CONTRACTIONS = listOf("s", "t", "re", "ve", "m", "ll", "d")
private val CJK_RANGES = listOf(
    0x4E00 to 0x9FFF, 0x3400 to 0x4DBF, 0x20000 to 0x2A6DF, 0x2A700 to 0x2B73F,
    0x2B740 to 0x2B81F, 0x2B820 to 0x2CEAF, 0xF900 to 0xFAFF, 0x2F800 to 0x2FA1F
)

/** GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters. */
val BYTE_ENCODER: Array<String> by lazy {
    val bs = ArrayList<Int>()
    bs.addAll('!'.toInt()..'~'.toInt()); bs.addAll(0xA1..0xAC); bs.addAll(0xAE..0xFF)
    val cs = ArrayList(bs)
    var n = 0
    for (b in 0 until 256) if (b !in bs) { bs.add(b); cs.add(256 + n); n++ }
    val out = Array(256) { "" }
    for (k in bs.indices) out[bs[k]] = String(Character.toChars(cs[k]))
    out
}

private fun category(cp: Int): Int = Character.getType(cp)

private fun isWhitespace(cp: Int) = cp == ' '.toInt() || cp == '\t'.toInt() || cp == '\n'.toInt() ||
    cp == '\r'.toInt() || category(cp) == Character.SPACE_SEPARATOR.toInt()

private fun isControl(cp: Int): Boolean {
    if (cp == '\t'.toInt() || cp == '\n'.toInt() || cp == '\r'.toInt()) return false
    return when (category(cp).toByte()) {
        Character.CONTROL, Character.FORMAT, Character.SURROGATE, Character.PRIVATE_USE, Character.UNASSIGNED -> true
        else -> false
    }
}

private fun isCjk(cp: Int) = CJK_RANGES.any { (lo, hi) -> cp in lo..hi }

private fun isLetter(cp: Int) = when (category(cp).toByte()) {
    Character.UPPERCASE_LETTER, Character.LOWERCASE_LETTER, Character.TITLECASE_LETTER, Character.MODIFIER_LETTER,
    Character.OTHER_LETTER -> true
    else -> false
}

private fun isNumber(cp: Int) = when (category(cp).toByte()) {
    Character.DECIMAL_DIGIT_NUMBER, Character.LETTER_NUMBER, Character.OTHER_NUMBER -> true
    else -> false
}

/** Python's ``str.isspace``: bidi class WS, B or S, or category Zs. */
fun pyIsSpace(cp: Int): Boolean = cp in 0x09..0x0D || cp in 0x1C..0x20 || cp == 0x85 || cp == 0xA0 ||
    cp == 0x1680 || cp in 0x2000..0x200A || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
    cp == 0x3000

private fun codePoints(s: String): IntArray = s.codePoints().toArray()
private fun str(cps: IntArray, from: Int, to: Int) = String(cps, from, to - from)

/** Python's ``str.split()`` (no argument): runs of whitespace separate, none at the ends. */
fun pySplit(s: String): List<String> {
    val cps = codePoints(s)
    val out = ArrayList<String>()
    var i = 0
    while (i < cps.size) {
        while (i < cps.size && pyIsSpace(cps[i])) i++
        if (i >= cps.size) break
        var j = i
        while (j < cps.size && !pyIsSpace(cps[j])) j++
        out.add(str(cps, i, j)); i = j
    }
    return out
}

/** Step 1: BasicTokenizer normalisation; lowercased words joined by single spaces. */
fun cleanText(text: String): String {
    val out = StringBuilder()
    for (cp in codePoints(text)) {
        if (cp == 0 || cp == 0xFFFD || isControl(cp)) continue
        when {
            isWhitespace(cp) -> out.append(' ')
            isCjk(cp) -> out.append(' ').appendCodePoint(cp).append(' ')
            else -> out.appendCodePoint(cp)
        }
    }
    val words = pySplit(Normalizer.normalize(out, Normalizer.Form.NFC))
    return words.joinToString(" ") { it.toLowerCase(Locale.ROOT) }
}

/** Step 2: CLIP's regex as a scanner. ``text`` is the output of [cleanText]. */
fun preTokenize(text: String): List<String> {
    val cps = codePoints(text)
    val pieces = ArrayList<String>()
    val specials = listOf(codePoints(BOS), codePoints(EOS))
    var i = 0
    val n = cps.size
    fun startsAt(p: IntArray, at: Int) = at + p.size <= n && (p.indices).all { cps[at + it] == p[it] }
    while (i < n) {
        val ch = cps[i]
        val special = specials.firstOrNull { startsAt(it, i) }
        if (special != null) { pieces.add(String(special, 0, special.size)); i += special.size; continue }
        if (ch == '\''.toInt()) {
            val c = CONTRACTIONS.firstOrNull { c ->
                str(cps, Math.min(i + 1, n), Math.min(i + 1 + c.length, n)).toLowerCase(Locale.ROOT) == c
            }
            if (c != null) { pieces.add(str(cps, i, i + 1 + c.length)); i += 1 + c.length; continue }
        }
        var j: Int
        if (isLetter(ch)) {
            j = i + 1
            while (j < n && isLetter(cps[j])) j++
        } else if (isNumber(ch)) {
            j = i + 1
        } else if (pyIsSpace(ch)) {
            i++; continue
        } else {
            j = i + 1
            while (j < n && !(pyIsSpace(cps[j]) || isLetter(cps[j]) || isNumber(cps[j]))) j++
        }
        pieces.add(str(cps, i, j)); i = j
    }
    return pieces
}

class TokenizerOutput(val inputIds: IntArray, val nTokens: Int, val truncated: Boolean)

/** Loads ``vocab.json`` + ``merges.txt`` (CLIP format) and encodes prompts to 77 ids. */
class CLIPBPETokenizer(val encoder: Map<String, Int>, merges: List<Pair<String, String>>, padToken: String = EOS) {
    private val bpeRanks = HashMap<Pair<String, String>, Int>()
    val bosId: Int
    val eosId: Int
    val padId: Int
    private val cache = HashMap<String, String>()

    init {
        for (tok in listOf(BOS, EOS, padToken))
            if (tok !in encoder) throw PocketdiffError("tokenizer vocab has no ${pyRepr(tok)} token")
        merges.forEachIndexed { i, p -> bpeRanks[p] = i }
        bosId = encoder.getValue(BOS); eosId = encoder.getValue(EOS); padId = encoder.getValue(padToken)
        cache[BOS] = BOS; cache[EOS] = EOS
    }

    companion object {
        /** Read ``vocab.json``, ``merges.txt`` and, if present, the pad token from ``special_tokens_map.json``. */
        fun fromDir(path: File): CLIPBPETokenizer {
            for (name in listOf("vocab.json", "merges.txt"))
                if (!File(path, name).isFile) throw PocketdiffError("tokenizer folder $path has no $name")
            val special = File(path, "special_tokens_map.json")
            return fromFiles(File(path, "vocab.json"), File(path, "merges.txt"), if (special.isFile) special else null)
        }

        /** The tokenizer from its files, each checked (one error naming the file). */
        fun fromFiles(vocabFile: File, mergesFile: File, specialFile: File? = null): CLIPBPETokenizer {
            val vocab: Any?
            val lines: List<String>
            val entry: Any?
            try {
                vocab = parseJson(readUtf8(vocabFile))
                lines = readUtf8(mergesFile).trim().split("\n")
                entry = if (specialFile != null) {
                    val sp = parseJson(readUtf8(specialFile))
                    if (sp !is Map<*, *>) throw IllegalStateException("'${typeName(sp)}' object has no attribute 'get'")
                    if (sp.containsKey("pad_token")) sp["pad_token"] else EOS
                } else EOS
            } catch (e: PocketdiffError) {
                throw e
            } catch (e: Exception) {
                throw PocketdiffError("cannot read the tokenizer (${vocabFile.parentFile}): ${e.message}")
            }
            if (vocab !is Map<*, *> || !vocab.all { (k, v) -> k is String && v is Long && v >= 0 && v <= Int.MAX_VALUE })
                throw PocketdiffError("tokenizer vocab $vocabFile must be an object of token -> id (an integer >= 0)")
            // Same slice as transformers: skip the '#version' line, at most 49152 - 256 - 2 merges.
            val merges = lines.subList(Math.min(1, lines.size), Math.min(lines.size, 49152 - 256 - 2 + 1)).map { pySplit(it) }
            if (merges.any { it.size != 2 })
                throw PocketdiffError("tokenizer merges $mergesFile: every line after the first must be two symbols")
            val pad = if (entry is Map<*, *>) entry["content"] else entry
            if (pad !is String) throw PocketdiffError("tokenizer $specialFile: pad_token must be a string, got ${pyRepr(pad)}")
            @Suppress("UNCHECKED_CAST")
            val enc = (vocab as Map<String, Long>).mapValues { it.value.toInt() }
            return CLIPBPETokenizer(enc, merges.map { it[0] to it[1] }, pad)
        }

        private fun readUtf8(f: File): String {
            val dec = Charsets.UTF_8.newDecoder()
            return dec.decode(java.nio.ByteBuffer.wrap(f.readBytes())).toString()
        }
    }

    /** Steps 3-4 for one pre-tokenised piece (already byte-encoded). */
    fun bpe(piece: String): List<String> {
        cache[piece]?.let { return it.split(" ") }
        val cps = codePoints(piece)
        var word: List<String> = (0 until cps.size - 1).map { str(cps, it, it + 1) } + (str(cps, cps.size - 1, cps.size) + "</w>")
        while (word.size > 1) {
            var best: Pair<String, String>? = null
            var bestRank = Int.MAX_VALUE
            for (k in 0 until word.size - 1) {
                val r = bpeRanks[word[k] to word[k + 1]] ?: continue
                if (r < bestRank) { bestRank = r; best = word[k] to word[k + 1] }
            }
            if (best == null) break
            val merged = ArrayList<String>()
            var k = 0
            while (k < word.size) {
                if (k < word.size - 1 && word[k] == best.first && word[k + 1] == best.second) {
                    merged.add(word[k] + word[k + 1]); k += 2
                } else { merged.add(word[k]); k += 1 }
            }
            word = merged
        }
        cache[piece] = word.joinToString(" ")
        return word
    }

    /** Token ids of ``text`` without BOS/EOS/padding; literal special tokens are split out first. */
    fun tokenize(text: String): List<Int> {
        val ids = ArrayList<Int>()
        var rest = text
        while (rest.isNotEmpty()) {
            val hits = listOf(BOS, EOS).filter { rest.contains(it) }.map { rest.indexOf(it) to it }
            if (hits.isEmpty()) { ids.addAll(tokenizeChunk(rest)); break }
            val (pos, special) = hits.sortedWith(compareBy({ it.first }, { it.second })).first()
            ids.addAll(tokenizeChunk(rest.substring(0, pos)))
            ids.add(encoder.getValue(special))
            rest = rest.substring(pos + special.length)
        }
        return ids
    }

    private fun tokenizeChunk(text: String): List<Int> {
        val ids = ArrayList<Int>()
        for (piece in preTokenize(cleanText(text))) {
            if (piece == BOS || piece == EOS) { ids.add(encoder.getValue(piece)); continue }
            val encoded = piece.toByteArray(Charsets.UTF_8).joinToString("") { BYTE_ENCODER[it.toInt() and 0xFF] }
            for (tok in bpe(encoded)) ids.add(encoder[tok] ?: eosId)
        }
        return ids
    }

    /** BOS + ids + EOS padded to ``maxLength``. Raises on overflow unless ``truncate``. */
    fun encode(text: String, maxLength: Int = MAX_LENGTH, truncate: Boolean = false): TokenizerOutput {
        var body = tokenize(text)
        val n = body.size + 2
        if (n > maxLength && !truncate)
            throw PocketdiffError("prompt is $n tokens (with start/end tokens), over the limit of $maxLength; " +
                "shorten it or pass --truncate to cut it")
        body = body.take(Math.max(maxLength - 2, 0))
        val ids = listOf(bosId) + body + eosId
        val padded = IntArray(maxLength) { if (it < ids.size) ids[it] else padId }
        return TokenizerOutput(padded, Math.min(n, maxLength), n > maxLength)
    }

    operator fun invoke(text: String, maxLength: Int = MAX_LENGTH, truncate: Boolean = false) =
        encode(text, maxLength, truncate)
}
