// Port of pocketdiff/runtime/policies/budget.py: BudgetFusion, the step count picked per prompt before the loop
// (--steps auto). The step_budget role maps the prompt's last_hidden_state [1, 77, D] to quality [1, K, M].
// The rule: the smallest step count whose predicted quality reaches every target (>= for a similarity, <= for a
// distance); when none does, the largest. Targets: auto (default preset), auto:NAME, auto:METRIC=VALUE[,...].
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Tensor
import pocketdiff.core.choiceError
import pocketdiff.core.num
import pocketdiff.core.pyFloat
import pocketdiff.core.pyRepr
import pocketdiff.core.typeName

const val STEP_BUDGET = "step_budget"
const val HIDDEN_IN = "encoder_hidden_states"
const val QUALITY = "quality"
const val AUTO = "auto"

/** Whether a ``steps`` value asks for the predicted budget (``auto`` or ``auto:...``). */
fun isAuto(steps: Any?): Boolean = steps is String && (steps == AUTO || steps.startsWith("$AUTO:"))

private class BadEntry(message: String) : Exception(message)

private val FLOAT_LITERAL = Regex("[+-]?((\\d(_?\\d)*)(\\.(\\d(_?\\d)*)?)?|\\.\\d(_?\\d)*)([eE][+-]?\\d(_?\\d)*)?")

/** Python's ``float(str)``, or null where it raises ValueError. */
fun pyParseFloat(s: String): Double? {
    val t = s.trim()
    val low = t.toLowerCase().removePrefix("+")
    when (low) {
        "inf", "infinity" -> return Double.POSITIVE_INFINITY
        "-inf", "-infinity" -> return Double.NEGATIVE_INFINITY
        "nan", "-nan" -> return Double.NaN
    }
    return if (FLOAT_LITERAL.matches(t)) t.replace("_", "").toDouble() else null
}

private fun pyIter(v: Any?): List<Any?> = when (v) {
    is List<*> -> v
    is Map<*, *> -> v.keys.toList()
    is String -> v.map { it.toString() }
    else -> throw BadEntry("'${typeName(v)}' object is not iterable")
}

private fun pyInt(v: Any?): Int = when (v) {
    is Boolean -> if (v) 1 else 0
    is Long -> v.toInt()
    is Double -> if (v.isNaN() || v.isInfinite()) throw BadEntry("cannot convert float ${pyFloat(v)} to integer") else v.toLong().toInt()
    is String -> v.trim().replace("_", "").toIntOrNull() ?: throw BadEntry("invalid literal for int() with base 10: ${pyRepr(v)}")
    else -> throw BadEntry("int() argument must be a string, a bytes-like object or a real number, not '${typeName(v)}'")
}

private fun pyFloatOf(v: Any?): Double = when (v) {
    is Boolean -> if (v) 1.0 else 0.0
    is Long, is Double -> num(v)
    is String -> pyParseFloat(v) ?: throw BadEntry("could not convert string to float: ${pyRepr(v)}")
    else -> throw BadEntry("float() argument must be a string or a real number, not '${typeName(v)}'")
}

private fun truthy(v: Any?): Boolean = when (v) {
    null -> false; is Boolean -> v; is Long -> v != 0L; is Double -> v != 0.0; is String -> v.isNotEmpty()
    is Collection<*> -> v.isNotEmpty(); is Map<*, *> -> v.isNotEmpty(); else -> true
}

private fun items(v: Any?): Map<*, *> = v as? Map<*, *> ?: throw BadEntry("'${typeName(v)}' object has no attribute 'items'")

/** The manifest's ``step_budget`` entry. */
class BudgetSpec(val stepCounts: List<Int>, val metrics: List<Any?>, val higherIsBetter: List<Boolean>,
                 val presets: Map<String, Map<String, Double>> = mapOf(), val defaultPreset: Any? = null) {
    companion object {
        fun fromDict(d: Map<*, *>): BudgetSpec {
            val spec = try {
                fun key(k: String) = if (d.containsKey(k)) d[k] else throw BadEntry(pyRepr(k))
                BudgetSpec(pyIter(key("step_counts")).map { pyInt(it) }, pyIter(key("metrics")),
                    pyIter(key("higher_is_better")).map { truthy(it) },
                    items(if (d.containsKey("presets")) d["presets"] else mapOf<String, Any?>()).entries.associate { (k, t) ->
                        pyRepr(k).let { k as? String ?: it } to items(t).entries.associate { (m, v) -> (m as String) to pyFloatOf(v) }
                    }, d["default_preset"])
            } catch (e: BadEntry) {
                throw PocketdiffError("bad step_budget entry ${pyRepr(d)}: ${e.message}")
            }
            return spec.validate()
        }
    }

    fun validate(): BudgetSpec {
        val s = stepCounts
        if (s.isEmpty() || s != s.toSortedSet().toList() || s[0] < 1)
            throw PocketdiffError("step_budget step_counts must be increasing integers >= 1, got ${pyRepr(s.map { it.toLong() })}")
        if (metrics.size != higherIsBetter.size || metrics.isEmpty())
            throw PocketdiffError("step_budget: ${metrics.size} metrics, ${higherIsBetter.size} directions")
        for ((name, targets) in presets) checkTargets(targets, "preset ${pyRepr(name)}")
        if (defaultPreset != null && defaultPreset !in presets.keys)
            throw choiceError("step_budget default preset", defaultPreset, presets.keys)
        return this
    }

    private fun checkTargets(targets: Map<String, Double>, what: String) {
        if (targets.isEmpty()) throw PocketdiffError("step budget $what: no targets")
        for ((m, v) in targets) {
            if (m !in metrics) throw choiceError("step budget metric in $what", m, metrics)
            if (v.isNaN() || v.isInfinite()) throw PocketdiffError("step budget $what: target $m=${pyFloat(v)} is not a finite number")
        }
    }

    fun toMap(): Map<String, Any?> = linkedMapOf("step_counts" to stepCounts.map { it.toLong() }, "metrics" to metrics,
        "higher_is_better" to higherIsBetter, "presets" to presets, "default_preset" to defaultPreset)

    /** The targets ``request`` (auto, auto:NAME, auto:METRIC=VALUE,...) names; one error line for a bad one. */
    fun targets(request: String): Map<String, Double> {
        if (!isAuto(request))
            throw PocketdiffError("steps must be an integer >= 1 or 'auto[:PRESET|METRIC=VALUE,...]', got ${pyRepr(request)}")
        val rest = if (request != AUTO) request.substring(AUTO.length + 1) else ""
        if (rest.isEmpty()) {
            if (defaultPreset == null)
                throw PocketdiffError("this bundle's step budget has no default preset; name one: auto:NAME " +
                    "(${presets.keys.joinToString(", ").ifEmpty { "none" }}) or auto:METRIC=VALUE")
            return LinkedHashMap(presets.getValue(defaultPreset as String))
        }
        if ("=" !in rest) return LinkedHashMap(presets[rest] ?: throw choiceError("step budget preset", rest, presets.keys))
        val targets = LinkedHashMap<String, Double>()
        for (item in rest.split(",")) {
            val eq = item.indexOf('=')
            val name = if (eq < 0) item else item.substring(0, eq)
            val value = if (eq < 0) "" else item.substring(eq + 1)
            targets[name.trim()] = pyParseFloat(value) ?: throw PocketdiffError("step budget target ${pyRepr(item)} is not METRIC=NUMBER")
        }
        checkTargets(targets, "request ${pyRepr(request)}")
        return targets
    }

    /** The smallest step count whose predicted ``quality`` [K][M] reaches every target, else the largest. */
    fun choose(quality: List<DoubleArray>, targets: Map<String, Double>): Int {
        val k = stepCounts.size
        for (row in 0 until k) {
            val ok = targets.all { (name, tau) ->
                val j = metrics.indexOf(name)
                if (higherIsBetter[j]) quality[row][j] >= tau else quality[row][j] <= tau
            }
            if (ok) return stepCounts[row]
        }
        return stepCounts[k - 1]
    }
}

/** What a predicted step budget keeps: the request, its targets, the predicted curve [K][M] and the steps. */
class BudgetRecord(val request: String, val targets: Map<String, Double>, val predicted: List<DoubleArray>, val steps: Int)

/** Run ``step_budget`` (through the loop's traced ``call``) on the prompt's states [1, 77, D] and apply the rule. */
fun predictSteps(call: (String, Map<String, Tensor>) -> Map<String, Tensor>, spec: BudgetSpec, promptHidden: Tensor,
                 request: String): BudgetRecord {
    val targets = spec.targets(request)
    val q = call(STEP_BUDGET, mapOf(HIDDEN_IN to promptHidden)).getValue(QUALITY)  // [1, K, M]
    val k = q.shape[1]; val m = q.shape[2]; val v = q.f()
    val quality = (0 until k).map { r -> DoubleArray(m) { v[r * m + it].toDouble() } }
    return BudgetRecord(request, targets, quality, spec.choose(quality, targets))
}
