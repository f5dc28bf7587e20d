// Port of pocketdiff/runtime/policies/ddsm.py: a per-step UNet width (DDSM). Step i runs the UNet of width
// widths[i], each width its own role (unet is the full width, unet_w625 width 0.625, ...), guidance as guided.py.
// A schedule naming a width the bundle has no UNet for, or a step count other than the schedule's, is refused.
package pocketdiff.core.policies

import pocketdiff.core.PocketdiffError
import pocketdiff.core.Tensor
import pocketdiff.core.isPyNumber
import pocketdiff.core.num
import pocketdiff.core.pyRepr
import java.math.BigInteger

const val WIDTH_STEPS = 8  // widths are multiples of 1/8: k/8 for k = 1..8

/** The UNet role of a width: ``unet`` at 1.0, else ``unet_w`` + the width in thousandths (``unet_w625``). */
fun widthRole(width: Double): String = if (width == 1.0) UNET else "unet_w%03d".format(Math.rint(width * 1000).toLong())

val WIDTH_ROLES: List<String> = (1 until WIDTH_STEPS).map { widthRole(it.toDouble() / WIDTH_STEPS) }

/** Python's ``Fraction(x).limit_denominator(maxDen)`` of a finite double, as (numerator, denominator). */
internal fun limitDenominator(x: Double, maxDen: Long): Pair<BigInteger, BigInteger> {
    val bd = java.math.BigDecimal(x)
    var num0 = bd.unscaledValue()
    var den0 = BigInteger.TEN.pow(Math.max(bd.scale(), 0))
    if (bd.scale() < 0) num0 = num0.multiply(BigInteger.TEN.pow(-bd.scale()))
    val g = num0.gcd(den0).max(BigInteger.ONE)
    num0 = num0.divide(g); den0 = den0.divide(g)
    val max = BigInteger.valueOf(maxDen)
    if (den0 <= max) return num0 to den0
    var p0 = BigInteger.ZERO; var q0 = BigInteger.ONE; var p1 = BigInteger.ONE; var q1 = BigInteger.ZERO
    var n = num0; var d = den0
    while (true) {
        val a = n.divide(d).let { if (n.signum() * d.signum() < 0 && it.multiply(d) != n) it - BigInteger.ONE else it }
        val q2 = q0 + a * q1
        if (q2 > max) break
        val np1 = p0 + a * p1
        p0 = p1; q0 = q1; p1 = np1; q1 = q2
        val nd = n - a * d; n = d; d = nd
    }
    val k = (max - q0).divide(q1)
    return if (BigInteger.valueOf(2) * d * (q0 + k * q1) <= den0) p1 to q1 else (p0 + k * p1) to (q0 + k * q1)
}

fun checkWidth(width: Any?): Double {
    val bad = width is Boolean || !isPyNumber(width) || !(num(width) > 0 && num(width) <= 1) ||
        limitDenominator(num(width), 1000).let { (p, q) -> (p * BigInteger.valueOf(WIDTH_STEPS.toLong())).mod(q).signum() != 0 }
    if (bad) throw PocketdiffError("sampler policy 'ddsm': width ${pyRepr(width)} is not a multiple of 1/8 in (0, 1]")
    return num(width)
}

class DDSMPolicy(params: Map<String, Any?>? = null) : GuidedPolicy(params, NAME, listOf("widths" to Param("list", listOf<Any?>()))) {
    companion object {
        const val NAME = "ddsm"
        val ROLES = listOf(UNET) + WIDTH_ROLES
    }

    override fun validate() {
        val widths = params["widths"] as List<*>
        if (widths.isEmpty()) throw PocketdiffError("sampler policy 'ddsm' needs params.widths: one UNet width per step")
        params["widths"] = widths.map { checkWidth(it) }
    }

    @Suppress("UNCHECKED_CAST")
    private val widths: List<Double> get() = params["widths"] as List<Double>

    override fun roles(): List<String> = widths.map { widthRole(it) }.distinct()

    override fun fixedSteps(): Int = widths.size

    override fun begin(run: Denoise): MutableMap<String, Any?> {
        val n = run.timesteps.size
        if (n != widths.size)
            throw PocketdiffError("the ddsm schedule has ${widths.size} widths, one per step, so it runs ${widths.size} " +
                "steps; $n were asked for")
        return guidanceState(run)
    }

    override fun step(run: Denoise, i: Int, t: Double, sample: Tensor, state: MutableMap<String, Any?>): Tensor =
        guidedCall(run, widthRole(widths[i]), t, sample, state).first
}
