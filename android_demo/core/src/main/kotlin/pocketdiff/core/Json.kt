// JSON exactly as Python's json.loads reads it (the runtime's manifests and vectors are written by Python's json):
// RFC 8259 plus the literals NaN, Infinity and -Infinity, no control characters inside strings, one value and
// nothing after it; duplicate keys keep the last value. Values are Python's: null, Boolean, Long (an integer
// literal), Double (a literal with a fraction or exponent), String, List, LinkedHashMap.
package pocketdiff.core

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonNull
import com.google.gson.JsonObject
import com.google.gson.JsonPrimitive

/** A JSON text that Python's json module refuses (the message says where, as Python's does). */
class JsonDecodeError(message: String) : Exception(message)

/** Parse ``text`` as Python's ``json.loads`` does. */
fun parseJson(text: String): Any? = JsonParserPy(text).parseDocument()

private class JsonParserPy(private val s: String) {
    private var i = 0

    fun parseDocument(): Any? {
        skipWs()
        val v = value()
        skipWs()
        if (i != s.length) error("Extra data")
        return v
    }

    private fun error(what: String): Nothing {
        val line = s.substring(0, Math.min(i, s.length)).count { it == '\n' } + 1
        val col = i - (s.lastIndexOf('\n', i - 1).let { if (it < 0) -1 else it })
        throw JsonDecodeError("$what: line $line column $col (char $i)")
    }

    private fun skipWs() { while (i < s.length && s[i] in " \t\n\r") i++ }

    private fun value(): Any? {
        if (i >= s.length) error("Expecting value")
        return when (s[i]) {
            '{' -> obj()
            '[' -> arr()
            '"' -> str()
            else -> when {
                s.startsWith("null", i) -> { i += 4; null }
                s.startsWith("true", i) -> { i += 4; true }
                s.startsWith("false", i) -> { i += 5; false }
                s.startsWith("NaN", i) -> { i += 3; Double.NaN }
                s.startsWith("Infinity", i) -> { i += 8; Double.POSITIVE_INFINITY }
                s.startsWith("-Infinity", i) -> { i += 9; Double.NEGATIVE_INFINITY }
                else -> number()
            }
        }
    }

    private fun number(): Any {
        val start = i
        if (i < s.length && s[i] == '-') i++
        if (i < s.length && s[i] == '0') i++
        else if (i < s.length && s[i] in '1'..'9') while (i < s.length && s[i].isAsciiDigit()) i++
        else { i = start; error("Expecting value") }
        var isFloat = false
        if (i + 1 < s.length && s[i] == '.' && s[i + 1].isAsciiDigit()) {
            isFloat = true; i++
            while (i < s.length && s[i].isAsciiDigit()) i++
        }
        if (i < s.length && (s[i] == 'e' || s[i] == 'E')) {
            var j = i + 1
            if (j < s.length && (s[j] == '+' || s[j] == '-')) j++
            if (j < s.length && s[j].isAsciiDigit()) {
                isFloat = true; i = j
                while (i < s.length && s[i].isAsciiDigit()) i++
            }
        }
        val lit = s.substring(start, i)
        return if (isFloat) lit.toDouble() else lit.toLongOrNull() ?: lit.toDouble()
    }

    private fun Char.isAsciiDigit() = this in '0'..'9'

    private fun str(): String {
        i++  // the opening quote
        val sb = StringBuilder()
        while (true) {
            if (i >= s.length) error("Unterminated string starting at")
            val c = s[i++]
            when {
                c == '"' -> return sb.toString()
                c == '\\' -> {
                    if (i >= s.length) error("Unterminated string starting at")
                    when (val e = s[i++]) {
                        '"' -> sb.append('"'); '\\' -> sb.append('\\'); '/' -> sb.append('/')
                        'b' -> sb.append('\b'); 'f' -> sb.append('\u000c'); 'n' -> sb.append('\n')
                        'r' -> sb.append('\r'); 't' -> sb.append('\t')
                        'u' -> {
                            if (i + 4 > s.length || !s.substring(i, i + 4).all { it in "0123456789abcdefABCDEF" })
                                error("Invalid \\uXXXX escape")
                            sb.append(s.substring(i, i + 4).toInt(16).toChar()); i += 4
                        }
                        else -> { i -= 2; error("Invalid \\escape ${pyRepr(e.toString())}") }
                    }
                }
                c < ' ' -> { i--; error("Invalid control character at") }
                else -> sb.append(c)
            }
        }
    }

    private fun obj(): Map<String, Any?> {
        i++
        val out = LinkedHashMap<String, Any?>()
        skipWs()
        if (i < s.length && s[i] == '}') { i++; return out }
        while (true) {
            skipWs()
            if (i >= s.length || s[i] != '"') error("Expecting property name enclosed in double quotes")
            val key = str()
            skipWs()
            if (i >= s.length || s[i] != ':') error("Expecting ':' delimiter")
            i++; skipWs()
            out[key] = value()
            skipWs()
            if (i < s.length && s[i] == ',') { i++; continue }
            if (i < s.length && s[i] == '}') { i++; return out }
            error("Expecting ',' delimiter")
        }
    }

    private fun arr(): List<Any?> {
        i++
        val out = ArrayList<Any?>()
        skipWs()
        if (i < s.length && s[i] == ']') { i++; return out }
        while (true) {
            skipWs()
            out.add(value())
            skipWs()
            if (i < s.length && s[i] == ',') { i++; continue }
            if (i < s.length && s[i] == ']') { i++; return out }
            error("Expecting ',' delimiter")
        }
    }
}

/** A Gson element as the value Python's json.loads gives: ints and floats kept apart by their literal. */
fun py(el: JsonElement?): Any? = when {
    el == null || el is JsonNull -> null
    el is JsonObject -> LinkedHashMap<String, Any?>().also { m -> for ((k, v) in el.entrySet()) m[k] = py(v) }
    el is JsonArray -> el.map { py(it) }
    el is JsonPrimitive && el.isBoolean -> el.asBoolean
    el is JsonPrimitive && el.isString -> el.asString
    else -> {
        val s = (el as JsonPrimitive).asString
        if (s.any { it == '.' || it == 'e' || it == 'E' } || s.contains("Infinity") || s == "NaN") s.toDouble()
        else s.toLongOrNull() ?: s.toDouble()
    }
}

/** A Python value as Gson JSON (a Double keeps its fraction: 1.0 stays 1.0). */
fun toJson(v: Any?): JsonElement = when (v) {
    null -> JsonNull.INSTANCE
    is Boolean -> JsonPrimitive(v)
    is Number -> JsonPrimitive(v)
    is String -> JsonPrimitive(v)
    is Map<*, *> -> JsonObject().also { o -> for ((k, x) in v) o.add(k.toString(), toJson(x)) }
    is Iterable<*> -> JsonArray().also { a -> for (x in v) a.add(toJson(x)) }
    else -> JsonPrimitive(v.toString())
}
