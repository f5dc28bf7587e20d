// Port of pocketdiff/runtime/schedulers.py: DDIM, EulerDiscrete, DPMSolverPP2M, PNDM, configured from a diffusers
// scheduler_config with from_config semantics (missing keys take the class defaults, unknown keys are ignored,
// options that change the maths and are not mirrored are refused), each expression in float32 as numpy does.
package pocketdiff.core

const val MAX_TRAIN_TIMESTEPS = 100_000L
const val MAX_SIGMA = 1e6

internal fun sqrtf(x: Float): Float = Math.sqrt(x.toDouble()).toFloat()
internal fun logf(x: Float): Float = Math.log(x.toDouble()).toFloat()
internal fun expf(x: Float): Float = Math.exp(x.toDouble()).toFloat()

/** Bit-exact ``torch.linspace(start, end, n, dtype=float32)``. */
internal fun linspaceF32(start: Double, end: Double, n: Int): FloatArray {
    if (n == 1) return floatArrayOf(start.toFloat())
    val st = start.toFloat(); val en = end.toFloat()
    val step = (en - st) / (n - 1).toFloat()
    return FloatArray(n) { i ->
        if (i < n / 2) (st.toDouble() + step.toDouble() * i).toFloat() else (en.toDouble() - step.toDouble() * (n - 1 - i)).toFloat()
    }
}

/** ``np.linspace(start, stop, n)`` in float64. */
internal fun npLinspace(start: Double, stop: Double, n: Int): DoubleArray {
    if (n <= 0) return DoubleArray(0)
    val div = n - 1
    val step = if (div > 0) (stop - start) / div else Double.NaN
    val y = DoubleArray(n) { i -> if (div > 0) i * step + start else i * (stop - start) + start }
    if (n > 1) y[n - 1] = stop
    return y
}

/** ``np.arange(start, stop, step)`` in float64 (its length rule and fill: start + i * (x[1] - x[0])). */
internal fun npArange(start: Double, stop: Double, step: Double): DoubleArray {
    val len = Math.ceil((stop - start) / step)
    if (!(len > 0)) return DoubleArray(0)
    val out = DoubleArray(len.toInt())
    out[0] = start
    if (out.size > 1) out[1] = start + step
    val delta = if (out.size > 1) out[1] - out[0] else 0.0
    for (i in 2 until out.size) out[i] = start + i * delta
    return out
}

/** ``np.interp(x, arange(len(fp)), fp)``. */
internal fun npInterp(x: DoubleArray, fp: FloatArray): DoubleArray = DoubleArray(x.size) { i ->
    val v = x[i]; val n = fp.size
    when {
        v.isNaN() -> v
        v < 0 -> fp[0].toDouble()
        v > n - 1 -> fp[n - 1].toDouble()
        else -> {
            var j = Math.floor(v).toInt(); if (j >= n - 1) j = n - 1
            if (j == n - 1 || j.toDouble() == v) fp[j].toDouble() else {
                val slope = (fp[j + 1].toDouble() - fp[j]) / 1.0
                val r = slope * (v - j) + fp[j]
                if (r.isNaN()) slope * (v - (j + 1)) + fp[j + 1] else r
            }
        }
    }
}

private fun reversed(a: DoubleArray) = DoubleArray(a.size) { a[a.size - 1 - it] }

/** Float32 cumulative alpha products, bit-exact with diffusers' torch computation. */
fun alphasCumprod(config: Map<String, Any?>): FloatArray {
    val n = (config["num_train_timesteps"] as Long).toInt()
    val schedule = config["beta_schedule"]
    val betas: FloatArray = when {
        config["trained_betas"] != null -> (config["trained_betas"] as List<*>).map { num(it).toFloat() }.toFloatArray()
        schedule == "linear" -> linspaceF32(num(config["beta_start"]), num(config["beta_end"]), n)
        schedule == "scaled_linear" ->
            linspaceF32(Math.sqrt(num(config["beta_start"])), Math.sqrt(num(config["beta_end"])), n).map { it * it }.toFloatArray()
        else -> throw choiceError("beta_schedule", schedule, listOf("linear", "scaled_linear"))
    }
    var acc = 1.0  // torch.cumprod accumulates float32 in double on CPU
    return FloatArray(betas.size) { acc *= (1f - betas[it]).toDouble(); acc.toFloat() }
}

private fun checkChoice(value: Any?, allowed: List<Any?>, what: String) {
    if (allowed.none { pyEquals(it, value) }) throw choiceError(what, value, allowed)
}

private val BASE_DEFAULTS: List<Pair<String, Any?>> = listOf(
    "num_train_timesteps" to 1000L, "beta_start" to 0.0001, "beta_end" to 0.02, "beta_schedule" to "linear",
    "trained_betas" to null, "prediction_type" to "epsilon", "steps_offset" to 0L)

/** Base: shared config handling. ``defaults``: the diffusers __init__ defaults; ``unsupported``: key -> neutral. */
abstract class Scheduler(config: Any?, val className: String, defaults: List<Pair<String, Any?>>,
                         unsupported: List<Pair<String, Any?>>) {
    val config: Map<String, Any?>
    val alphasCumprod: FloatArray
    var timesteps: DoubleArray = DoubleArray(0)
    var numInferenceSteps = 0
    protected val T: Int

    init {
        if (config !is Map<*, *>) throw PocketdiffError("scheduler config must be an object, got ${typeName(config)}")
        val cfg = LinkedHashMap<String, Any?>()
        for ((k, v) in defaults) cfg[k] = if (config.containsKey(k)) config[k] else v
        checkTypes(cfg, defaults)
        for ((key, neutral) in unsupported) {
            if (config[key] != null && !pyEquals(config[key], neutral))
                throw PocketdiffError("scheduler option $key=${pyRepr(config[key])} is not supported by the pocketdiff " +
                    "runtime ($className); allowed: ${pyRepr(neutral)}")
        }
        checkChoice(cfg["prediction_type"], listOf("epsilon", "v_prediction"), "prediction_type")
        checkChoice(cfg["timestep_spacing"], listOf("leading", "trailing", "linspace"), "timestep_spacing")
        this.config = cfg
        T = (cfg["num_train_timesteps"] as Long).toInt()
        alphasCumprod = alphasCumprod(cfg)
        val a = alphasCumprod[alphasCumprod.size - 1].toDouble()
        if (!(a > 1 / (1 + MAX_SIGMA * MAX_SIGMA)))
            throw PocketdiffError("scheduler config leaves no signal: alphas_cumprod falls to ${formatG(a, 3)} by " +
                "timestep ${T - 1} (sigma over ${formatG(MAX_SIGMA)}); shorten num_train_timesteps or lower beta_end")
    }

    protected fun bool(key: String) = config[key] as Boolean
    protected fun str(key: String) = config[key] as String
    protected fun int(key: String) = (config[key] as Long).toInt()
    protected val vPrediction: Boolean get() = config["prediction_type"] == "v_prediction"

    open val initNoiseSigma: Float get() = 1f
    open fun scaleModelInput(sample: Tensor, stepIndex: Int): Tensor = sample
    abstract fun setTimesteps(n: Int)
    abstract fun step(modelOutput: Tensor, stepIndex: Int, sample: Tensor): Tensor

    protected fun checkSteps(n: Int) {
        if (n < 1 || n > T) throw PocketdiffError("steps must be an integer in [1, $T], got $n")
    }

    /** The leading/trailing/linspace grids shared by DDIM and Euler (``f32``: Euler's float32 timesteps). */
    protected fun spaced(n: Int, f32: Boolean): DoubleArray {
        val spacing = str("timestep_spacing")
        if (spacing == "linspace") {
            val y = npLinspace(0.0, (T - 1).toDouble(), n)
            return reversed(DoubleArray(n) { if (f32) y[it].toFloat().toDouble() else Math.rint(y[it]) })
        }
        if (spacing == "leading") {
            val off = int("steps_offset")
            return reversed(DoubleArray(n) { Math.rint((it * (T / n)).toDouble()) + off })
        }
        return npArange(T.toDouble(), 0.0, -T.toDouble() / n).map { Math.rint(it) - 1 }.toDoubleArray()
    }

    protected fun alphaAt(t: Int): Float = alphasCumprod[if (t < 0) t + alphasCumprod.size else t]
}

private fun checkTypes(cfg: Map<String, Any?>, defaults: List<Pair<String, Any?>>) {
    for ((key, default) in defaults) {
        val v = cfg[key]
        val (ok, kind) = when (default) {
            is Boolean -> (v is Boolean) to "bool"
            is Long -> isPyInt(v) to "int"
            is Double -> (isPyNumber(v) && (isFiniteNumber(v) || num(v) == default)) to "float"
            is String -> (v is String) to "str"
            else -> true to ""
        }
        if (!ok) throw PocketdiffError("scheduler option $key must be $kind, got ${pyRepr(v)}")
    }
    val n = cfg["num_train_timesteps"] as Long
    if (n < 2 || n > MAX_TRAIN_TIMESTEPS)
        throw PocketdiffError("scheduler option num_train_timesteps must be in [2, $MAX_TRAIN_TIMESTEPS], got $n")
    val bs = num(cfg["beta_start"]); val be = num(cfg["beta_end"])
    if (!(bs > 0 && bs < 1) || !(be > 0 && be < 1))
        throw PocketdiffError("scheduler options beta_start and beta_end must be in (0, 1), got ${pyRepr(cfg["beta_start"])}, " +
            pyRepr(cfg["beta_end"]))
    val off = cfg["steps_offset"] as Long
    if (off < 0 || off >= n) throw PocketdiffError("scheduler option steps_offset must be in [0, $n), got $off")
    val betas = cfg["trained_betas"]
    if (betas != null && (betas !is List<*> || betas.size.toLong() != n ||
            !betas.all { isPyNumber(it) && num(it) > 0 && num(it) < 1 }))
        throw PocketdiffError("scheduler option trained_betas must be null or $n numbers in (0, 1)")
}

private fun ew(a: Tensor, fn: (Int) -> Float) = Tensor(a.shape.copyOf(), FloatArray(a.size) { fn(it) })

/** Mirrors diffusers.DDIMScheduler (eta = 0). */
class DDIM(config: Any?) : Scheduler(config, "DDIM", BASE_DEFAULTS + listOf("clip_sample" to true,
    "set_alpha_to_one" to true, "clip_sample_range" to 1.0, "timestep_spacing" to "leading"),
    listOf("thresholding" to false, "rescale_betas_zero_snr" to false)) {
    private val finalAlphaCumprod = if (bool("set_alpha_to_one")) 1f else alphasCumprod[0]

    override fun setTimesteps(n: Int) { checkSteps(n); numInferenceSteps = n; timesteps = spaced(n, false) }

    override fun step(modelOutput: Tensor, stepIndex: Int, sample: Tensor): Tensor {
        val t = timesteps[stepIndex].toInt()
        val prevT = t - T / numInferenceSteps
        val aT = alphaAt(t)
        val aPrev = if (prevT >= 0) alphaAt(prevT) else finalAlphaCumprod
        val bT = 1f - aT
        val m = modelOutput.f(); val s = sample.f()
        val clip = bool("clip_sample"); val r = num(config["clip_sample_range"]).toFloat()
        val v = vPrediction
        return ew(sample) { i ->
            var x0 = if (!v) (s[i] - sqrtf(bT) * m[i]) / sqrtf(aT) else sqrtf(aT) * s[i] - sqrtf(bT) * m[i]
            val eps = if (!v) m[i] else sqrtf(aT) * m[i] + sqrtf(bT) * s[i]
            if (clip) x0 = Math.min(Math.max(x0, -r), r)
            val direction = sqrtf(1f - aPrev) * eps
            sqrtf(aPrev) * x0 + direction
        }
    }
}

/** Mirrors diffusers.EulerDiscreteScheduler (s_churn = 0, linear sigma interpolation). */
class EulerDiscrete(config: Any?) : Scheduler(config, "EulerDiscrete", BASE_DEFAULTS + listOf(
    "timestep_spacing" to "linspace", "final_sigmas_type" to "zero", "interpolation_type" to "linear"),
    listOf("use_karras_sigmas" to false, "use_exponential_sigmas" to false, "use_beta_sigmas" to false,
        "rescale_betas_zero_snr" to false, "timestep_type" to "discrete", "sigma_min" to null, "sigma_max" to null)) {
    private val trainSigmas: FloatArray
    var sigmas: FloatArray

    init {
        checkChoice(this.config["interpolation_type"], listOf("linear"), "interpolation_type")
        checkChoice(this.config["final_sigmas_type"], listOf("zero", "sigma_min"), "final_sigmas_type")
        val ac = alphasCumprod
        trainSigmas = FloatArray(ac.size) { sqrtf((1f - ac[it]) / ac[it]) }
        sigmas = FloatArray(ac.size + 1) { if (it < ac.size) trainSigmas[ac.size - 1 - it] else 0f }
    }

    override fun setTimesteps(n: Int) {
        checkSteps(n); numInferenceSteps = n
        val ts = spaced(n, true)
        val sig = npInterp(ts, trainSigmas)
        val last = if (str("final_sigmas_type") == "sigma_min") sqrtf((1f - alphasCumprod[0]) / alphasCumprod[0]) else 0f
        sigmas = FloatArray(n + 1) { if (it < n) sig[it].toFloat() else last }
        timesteps = ts
    }

    override val initNoiseSigma: Float get() {
        val max = sigmas.fold(Float.NEGATIVE_INFINITY) { a, b -> Math.max(a, b) }
        return if (str("timestep_spacing") == "linspace" || str("timestep_spacing") == "trailing") max else sqrtf(max * max + 1f)
    }

    override fun scaleModelInput(sample: Tensor, stepIndex: Int): Tensor {
        val sigma = sigmas[stepIndex]; val s = sample.f(); val d = sqrtf((sigma * sigma) + 1f)
        return ew(sample) { s[it] / d }
    }

    override fun step(modelOutput: Tensor, stepIndex: Int, sample: Tensor): Tensor {
        val sigma = sigmas[stepIndex]; val sigmaHat = sigma * 1f
        val m = modelOutput.f(); val s = sample.f()
        val c1 = -sigma / sqrtf((sigma * sigma) + 1f); val c2 = (sigma * sigma) + 1f
        val dt = sigmas[stepIndex + 1] - sigmaHat
        val v = vPrediction
        return ew(sample) { i ->
            val x0 = if (!v) s[i] - sigmaHat * m[i] else m[i] * c1 + (s[i] / c2)
            val derivative = (s[i] - x0) / sigmaHat
            s[i] + derivative * dt
        }
    }
}

/** Mirrors diffusers.DPMSolverMultistepScheduler with algorithm_type='dpmsolver++', order <= 2. */
class DPMSolverPP2M(config: Any?) : Scheduler(config, "DPMSolverPP2M", BASE_DEFAULTS + listOf("solver_order" to 2L,
    "algorithm_type" to "dpmsolver++", "solver_type" to "midpoint", "lower_order_final" to true,
    "euler_at_final" to false, "final_sigmas_type" to "zero", "lambda_min_clipped" to Double.NEGATIVE_INFINITY,
    "timestep_spacing" to "linspace"),
    listOf("use_karras_sigmas" to false, "use_exponential_sigmas" to false, "use_beta_sigmas" to false,
        "use_lu_lambdas" to false, "use_flow_sigmas" to false, "thresholding" to false,
        "rescale_betas_zero_snr" to false, "variance_type" to null, "use_dynamic_shifting" to false)) {
    private val trainSigmas: FloatArray
    private val lambdaT: FloatArray
    var sigmas: FloatArray
    private var outputs: MutableList<FloatArray?> = ArrayList()
    private var lowerOrderNums = 0

    init {
        checkChoice(this.config["algorithm_type"], listOf("dpmsolver++"), "algorithm_type")
        checkChoice(this.config["solver_order"], listOf(1L, 2L), "solver_order")
        checkChoice(this.config["solver_type"], listOf("midpoint", "heun"), "solver_type")
        checkChoice(this.config["final_sigmas_type"], listOf("zero", "sigma_min"), "final_sigmas_type")
        val ac = alphasCumprod
        trainSigmas = FloatArray(ac.size) { sqrtf((1f - ac[it]) / ac[it]) }
        lambdaT = FloatArray(ac.size) { logf(sqrtf(ac[it])) - logf(sqrtf(1f - ac[it])) }
        sigmas = trainSigmas
    }

    override fun setTimesteps(n: Int) {
        checkSteps(n)
        val lmc = num(config["lambda_min_clipped"]).toFloat()
        var clippedIdx = 0  // searchsorted(lambda_t[::-1], lambda_min_clipped), side left
        while (clippedIdx < lambdaT.size && lambdaT[lambdaT.size - 1 - clippedIdx] < lmc) clippedIdx++
        val last = T - clippedIdx
        val ts: DoubleArray = when (str("timestep_spacing")) {
            "linspace" -> reversed(npLinspace(0.0, (last - 1).toDouble(), n + 1).map { Math.rint(it) }.toDoubleArray()).copyOf(n)
            "leading" -> {
                val ratio = last / (n + 1)
                DoubleArray(n) { (((n - it) * ratio).toDouble()) + int("steps_offset") }
            }
            else -> npArange(last.toDouble(), 0.0, -T.toDouble() / n).map { Math.rint(it) - 1 }.toDoubleArray()
        }
        val sig = npInterp(ts, trainSigmas)
        val final = if (str("final_sigmas_type") == "sigma_min") sqrtf((1f - alphasCumprod[0]) / alphasCumprod[0]) else 0f
        sigmas = FloatArray(ts.size + 1) { if (it < ts.size) sig[it].toFloat() else final }
        timesteps = ts
        numInferenceSteps = ts.size
        outputs = MutableList(int("solver_order")) { null }
        lowerOrderNums = 0
    }

    private fun alphaSigma(sigma: Float): Pair<Float, Float> {
        val alpha = 1f / sqrtf((sigma * sigma) + 1f)
        return alpha to sigma * alpha
    }

    override fun step(modelOutput: Tensor, stepIndex: Int, sample: Tensor): Tensor {
        val n = timesteps.size; val order = int("solver_order")
        val lowerFinal = stepIndex == n - 1 && (bool("euler_at_final") || (bool("lower_order_final") && n < 15) ||
            str("final_sigmas_type") == "zero")
        val (alphaS0, sigmaS0) = alphaSigma(sigmas[stepIndex])
        val m = modelOutput.f(); val s = sample.f()
        val x0 = if (!vPrediction) FloatArray(s.size) { (s[it] - sigmaS0 * m[it]) / alphaS0 }
        else FloatArray(s.size) { alphaS0 * s[it] - sigmaS0 * m[it] }
        outputs = (outputs.drop(1) + listOf<FloatArray?>(x0)).toMutableList()
        val (alphaT, sigmaT) = alphaSigma(sigmas[stepIndex + 1])
        val lambdaT = logf(alphaT) - logf(sigmaT)  // sigma_t = 0 at the last step: +inf, as in diffusers
        val lambdaS0 = logf(alphaS0) - logf(sigmaS0)
        val h = lambdaT - lambdaS0
        val c1 = sigmaT / sigmaS0
        val c2 = alphaT * (expf(-h) - 1f)
        val out: FloatArray
        if (order == 1 || lowerOrderNums < 1 || lowerFinal) {
            out = FloatArray(s.size) { c1 * s[it] - c2 * x0[it] }
        } else {
            val (alphaS1, sigmaS1) = alphaSigma(sigmas[stepIndex - 1])
            val lambdaS1 = logf(alphaS1) - logf(sigmaS1)
            val m0 = outputs[outputs.size - 1]!!; val m1 = outputs[outputs.size - 2]!!
            val r0 = (lambdaS0 - lambdaS1) / h
            val k = 1f / r0
            val d1 = FloatArray(s.size) { k * (m0[it] - m1[it]) }
            out = if (str("solver_type") == "midpoint") {
                val c3 = 0.5f * c2
                FloatArray(s.size) { c1 * s[it] - c2 * m0[it] - c3 * d1[it] }
            } else {
                val c3 = alphaT * ((expf(-h) - 1f) / h + 1f)
                FloatArray(s.size) { c1 * s[it] - c2 * m0[it] + c3 * d1[it] }
            }
        }
        if (lowerOrderNums < order) lowerOrderNums++
        return Tensor(sample.shape.copyOf(), out)
    }
}

/** Mirrors diffusers.PNDMScheduler with skip_prk_steps=True (PLMS), SD's default sampler. */
class PNDM(config: Any?) : Scheduler(config, "PNDM", BASE_DEFAULTS + listOf("skip_prk_steps" to false,
    "set_alpha_to_one" to false, "timestep_spacing" to "leading"), listOf()) {
    private val finalAlphaCumprod: Float
    private var ets: List<FloatArray> = ArrayList()
    private var counter = 0
    private var curSample: FloatArray? = null

    init {
        if (!bool("skip_prk_steps"))
            throw PocketdiffError("scheduler option skip_prk_steps=False (Runge-Kutta warm-up) is not supported by the " +
                "pocketdiff runtime; allowed: True (PLMS, as Stable Diffusion ships)")
        finalAlphaCumprod = if (bool("set_alpha_to_one")) 1f else alphasCumprod[0]
    }

    override fun setTimesteps(n: Int) {
        checkSteps(n); numInferenceSteps = n
        val base: DoubleArray = when (str("timestep_spacing")) {
            "linspace" -> npLinspace(0.0, (T - 1).toDouble(), n).map { Math.rint(it) }.toDoubleArray()
            "leading" -> DoubleArray(n) { Math.rint((it * (T / n)).toDouble()) + int("steps_offset") }
            else -> reversed(npArange(T.toDouble(), 0.0, -T.toDouble() / n).map { Math.rint(it) }.toDoubleArray()).map { it - 1 }.toDoubleArray()
        }
        // PLMS runs one extra step: the second-to-last timestep appears twice.
        val b = base.toList()
        val all = b.dropLast(1) + (if (b.size >= 2) listOf(b[b.size - 2]) else listOf()) + b.takeLast(1)
        timesteps = reversed(all.toDoubleArray())
        ets = ArrayList(); counter = 0; curSample = null
    }

    private fun prevSample(sample: FloatArray, t: Int, prevT: Int, eps0: FloatArray): FloatArray {
        val aT = alphaAt(t)
        val aPrev = if (prevT >= 0) alphaAt(prevT) else finalAlphaCumprod
        val bT = 1f - aT; val bPrev = 1f - aPrev
        val eps = if (vPrediction) FloatArray(eps0.size) { sqrtf(aT) * eps0[it] + sqrtf(bT) * sample[it] } else eps0
        val coeff = sqrtf(aPrev / aT)
        val denom = aT * sqrtf(bPrev) + sqrtf(aT * bT * aPrev)
        val d = aPrev - aT
        return FloatArray(sample.size) { coeff * sample[it] - d * eps[it] / denom }
    }

    override fun step(modelOutput: Tensor, stepIndex: Int, sample: Tensor): Tensor {
        var t = timesteps[stepIndex].toInt()
        val stride = T / numInferenceSteps
        var prevT = t - stride
        val m = modelOutput.f()
        var s = sample.f()
        if (counter != 1) ets = ets.takeLast(3) + listOf(m) else { prevT = t; t += stride }
        val e = ets; val k = e.size
        val eps: FloatArray = when {
            k == 1 && counter == 0 -> { curSample = s; m }
            k == 1 && counter == 1 -> { val x = e[0]; s = curSample!!; curSample = null; FloatArray(m.size) { (m[it] + x[it]) / 2f } }
            k == 2 -> FloatArray(m.size) { (3f * e[1][it] - e[0][it]) / 2f }
            k == 3 -> FloatArray(m.size) { (23f * e[2][it] - 16f * e[1][it] + 5f * e[0][it]) / 12f }
            else -> { val c = (1.0 / 24).toFloat()
                FloatArray(m.size) { c * (55f * e[3][it] - 59f * e[2][it] + 37f * e[1][it] - 9f * e[0][it]) } }
        }
        counter++
        return Tensor(sample.shape.copyOf(), prevSample(s, t, prevT, eps))
    }
}

/** One sampler name: the runtime class, the diffusers class it mirrors, and forced config values. */
class SchedulerEntry(val name: String, val diffusersClass: String, val overrides: Map<String, Any?>,
                     private val make: (Map<String, Any?>) -> Scheduler) {
    /** ``config`` (any diffusers scheduler's) as this scheduler's config: overrides and ``_class_name`` set. */
    fun configFor(config: Map<String, Any?>): Map<String, Any?> =
        LinkedHashMap(config).also { it.putAll(overrides); it["_class_name"] = diffusersClass }

    fun create(config: Map<String, Any?>): Scheduler = make(configFor(config))
}

val SCHEDULERS: LinkedHashMap<String, SchedulerEntry> = linkedMapOf(
    "ddim" to SchedulerEntry("ddim", "DDIMScheduler", mapOf()) { DDIM(it) },
    "euler" to SchedulerEntry("euler", "EulerDiscreteScheduler", mapOf()) { EulerDiscrete(it) },
    "dpm++2m" to SchedulerEntry("dpm++2m", "DPMSolverMultistepScheduler",
        mapOf("algorithm_type" to "dpmsolver++", "solver_order" to 2L)) { DPMSolverPP2M(it) },
    "pndm" to SchedulerEntry("pndm", "PNDMScheduler", mapOf("skip_prk_steps" to true)) { PNDM(it) }
)

/** Registry name of a saved scheduler config (its ``_class_name``); error if we do not mirror it. */
fun schedulerNameFor(config: Any?): String {
    if (config !is Map<*, *>) throw PocketdiffError("scheduler config must be an object, got ${typeName(config)}")
    val cls = config["_class_name"]
    for ((name, entry) in SCHEDULERS) if (entry.diffusersClass == cls) return name
    throw choiceError("scheduler class", cls, SCHEDULERS.values.map { it.diffusersClass })
}

fun getSchedulerEntry(name: Any?): SchedulerEntry {
    if (name is String) SCHEDULERS[name]?.let { return it }
    throw choiceError("scheduler", name, SCHEDULERS.keys)
}

/** Runtime scheduler for ``name`` (default: the config's own class) from a diffusers config (Python values). */
fun schedulerFromConfig(config: Any?, name: String? = null): Scheduler {
    if (config !is Map<*, *>) throw PocketdiffError("scheduler config must be an object, got ${typeName(config)}")
    @Suppress("UNCHECKED_CAST")
    return getSchedulerEntry(name ?: schedulerNameFor(config)).create(config as Map<String, Any?>)
}
