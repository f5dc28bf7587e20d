// Port of pocketdiff/errors.py: the one error type for bad input, and the helpers that let every message read
// exactly as the Python runtime's (Python's repr of JSON values, its type names, "%g" formatting).
package pocketdiff.core

import com.google.gson.JsonElement
import java.math.BigDecimal
import java.math.MathContext
import java.math.RoundingMode

/** A problem with the user's input; the message names the bad value and what is allowed. */
class PocketdiffError(message: String) : Exception(message)

/** The standard 'unknown X' error: names the bad value and lists the allowed ones. */
fun choiceError(what: String, value: Any?, allowed: Iterable<Any?>): PocketdiffError =
    PocketdiffError("unknown $what ${pyRepr(value)}; allowed: ${allowed.joinToString(", ") { pyStr(it) }}")

// ---- JSON values as Python's json gives them (Json.kt): null, Boolean, Long, Double, String, List, Map ----

fun isPyInt(v: Any?): Boolean = v is Long || v is Int
fun isPyNumber(v: Any?): Boolean = v is Long || v is Int || v is Double || v is Float
fun isFiniteNumber(v: Any?): Boolean = isPyNumber(v) && (v as Number).toDouble().let { !it.isNaN() && !it.isInfinite() }
fun num(v: Any?): Double = (v as Number).toDouble()

/** Python's ``==`` on JSON values (1 == 1.0 == True). */
fun pyEquals(a: Any?, b: Any?): Boolean {
    fun n(x: Any?): Double? = when (x) { is Boolean -> if (x) 1.0 else 0.0; is Number -> x.toDouble(); else -> null }
    val na = n(a); val nb = n(b)
    if (na != null && nb != null) return na == nb
    return a == b
}

/** Python's ``type(v).__name__``. */
fun typeName(v: Any?): String = when (v) {
    null -> "NoneType"; is Boolean -> "bool"; is Long, is Int -> "int"; is Double, is Float -> "float"
    is String -> "str"; is Map<*, *> -> "dict"; is List<*> -> "list"; else -> v.javaClass.simpleName
}

/** Python's ``str(v)``. */
fun pyStr(v: Any?): String = if (v is String) v else pyRepr(v)

/** Python's ``repr(v)`` of a JSON value. */
fun pyRepr(v: Any?): String = when (v) {
    null -> "None"
    is Boolean -> if (v) "True" else "False"
    is Long, is Int -> v.toString()
    is Double -> pyFloat(v)
    is Float -> pyFloat(v.toDouble())
    is String -> pyStrRepr(v)
    is Map<*, *> -> v.entries.joinToString(", ", "{", "}") { "${pyRepr(it.key)}: ${pyRepr(it.value)}" }
    is Iterable<*> -> v.joinToString(", ", "[", "]") { pyRepr(it) }
    is IntArray -> v.joinToString(", ", "[", "]")
    is JsonElement -> pyRepr(py(v))
    else -> v.toString()
}

private fun pyStrRepr(s: String): String {
    val q = if (s.contains('\'') && !s.contains('"')) '"' else '\''
    val sb = StringBuilder().append(q)
    var i = 0
    while (i < s.length) {
        val cp = s.codePointAt(i)
        i += Character.charCount(cp)
        when {
            cp == '\\'.toInt() -> sb.append("\\\\")
            cp == q.toInt() -> sb.append('\\').append(q)
            cp == '\n'.toInt() -> sb.append("\\n")
            cp == '\r'.toInt() -> sb.append("\\r")
            cp == '\t'.toInt() -> sb.append("\\t")
            !isPrintable(cp) -> sb.append(when {
                cp < 0x100 -> "\\x%02x".format(cp); cp < 0x10000 -> "\\u%04x".format(cp); else -> "\\U%08x".format(cp)
            })
            else -> sb.appendCodePoint(cp)
        }
    }
    return sb.append(q).toString()
}

private fun isPrintable(cp: Int): Boolean {
    if (cp == ' '.toInt()) return true
    return when (Character.getType(cp).toByte()) {
        Character.CONTROL, Character.FORMAT, Character.SURROGATE, Character.PRIVATE_USE, Character.UNASSIGNED,
        Character.LINE_SEPARATOR, Character.PARAGRAPH_SEPARATOR, Character.SPACE_SEPARATOR -> false
        else -> true
    }
}

/** Python's ``repr(float)``: shortest round-trip digits, exponent form below 1e-4 and from 1e16. */
fun pyFloat(d: Double): String {
    if (d.isNaN()) return "nan"
    if (d.isInfinite()) return if (d > 0) "inf" else "-inf"
    if (d == 0.0) return if (1.0 / d < 0) "-0.0" else "0.0"
    val bd = BigDecimal(java.lang.Double.toString(Math.abs(d))).stripTrailingZeros()
    val digits = bd.unscaledValue().toString()
    val exp = digits.length - 1 - bd.scale()  // scientific exponent of the first digit
    val sign = if (d < 0) "-" else ""
    if (exp < -4 || exp >= 16) {
        val mant = if (digits.length == 1) digits else digits[0] + "." + digits.substring(1)
        return sign + mant + "e" + (if (exp < 0) "-" else "+") + "%02d".format(Math.abs(exp))
    }
    val plain = bd.toPlainString()
    return sign + if (plain.contains('.')) plain else "$plain.0"
}

/** Python's ``format(x, ".{prec}g")``. */
fun formatG(x: Double, prec: Int = 6): String {
    if (x.isNaN()) return "nan"
    if (x.isInfinite()) return if (x > 0) "inf" else "-inf"
    if (x == 0.0) return if (1.0 / x < 0) "-0" else "0"
    val r = BigDecimal(x).round(MathContext(prec, RoundingMode.HALF_EVEN))
    val exp = r.precision() - r.scale() - 1
    fun strip(s: String) = if (s.contains('.')) s.trimEnd('0').trimEnd('.') else s
    if (exp < -4 || exp >= prec) {
        val m = strip(r.movePointLeft(exp).setScale(prec - 1, RoundingMode.HALF_EVEN).toPlainString())
        return m + "e" + (if (exp < 0) "-" else "+") + "%02d".format(Math.abs(exp))
    }
    return strip(r.setScale(Math.max(prec - 1 - exp, 0), RoundingMode.HALF_EVEN).toPlainString())
}
