// Port of pocketdiff/runtime/sessions.py: the Session interface the sampler loop calls, whatever runs the model
// (onnxruntime-android, ExecuTorch, or the conformance runner's replay), with named tensors in and out.
// Feeds follow the Python runtime: input_ids int64 [1, 77], timestep float32 [] (shape IntArray(0)), the rest
// float32; a real backend casts each input to the dtype its graph declares.
package pocketdiff.core

/** A float32 or int64 tensor, row-major. Exactly one of [floats] and [longs] is set. */
class Tensor(val shape: IntArray, val floats: FloatArray? = null, val longs: LongArray? = null) {
    init {
        require((floats == null) != (longs == null)) { "a tensor holds float32 or int64 data" }
        val n = shape.fold(1) { a, b -> a * b }
        require(size == n) { "tensor data of $size values for shape ${shape.toList()}" }
    }

    val size: Int get() = floats?.size ?: longs!!.size
    val rank: Int get() = shape.size
    val dtype: String get() = if (floats != null) "float32" else "int64"

    /** Float32 data (an int64 tensor's values converted). */
    fun f(): FloatArray = floats ?: FloatArray(size) { longs!![it].toFloat() }

    /** The value at flat index ``i`` as a double. */
    fun at(i: Int): Double = floats?.get(i)?.toDouble() ?: longs!![i].toDouble()

    /** Rows ``from until to`` of the leading dimension. */
    fun rows(from: Int, to: Int): Tensor {
        val per = if (shape.isEmpty() || shape[0] == 0) 0 else size / shape[0]
        val s = shape.copyOf().also { it[0] = to - from }
        return if (floats != null) Tensor(s, floats.copyOfRange(from * per, to * per))
        else Tensor(s, longs = longs!!.copyOfRange(from * per, to * per))
    }

    fun map(fn: (Float) -> Float): Tensor { val a = f(); return Tensor(shape.copyOf(), FloatArray(size) { fn(a[it]) }) }

    override fun toString(): String = "Tensor(${shape.toList()}, $dtype)"

    companion object {
        fun scalar(v: Float) = Tensor(IntArray(0), floatArrayOf(v))
        fun of(shape: IntArray, v: FloatArray) = Tensor(shape, v)
        fun longs(shape: IntArray, v: LongArray) = Tensor(shape, longs = v)

        /** Float tensors stacked along the leading dimension (np.concatenate(axis=0)). */
        fun concat(parts: List<Tensor>): Tensor {
            val first = parts[0]
            val shape = first.shape.copyOf().also { s -> s[0] = parts.sumBy { it.shape[0] } }
            val out = FloatArray(parts.sumBy { it.size })
            var at = 0
            for (p in parts) { val a = p.f(); System.arraycopy(a, 0, out, at, a.size); at += a.size }
            return Tensor(shape, out)
        }
    }
}

/** Elementwise float32 ``a OP b`` of two tensors of one shape. */
inline fun zip(a: Tensor, b: Tensor, fn: (Float, Float) -> Float): Tensor {
    val x = a.f(); val y = b.f()
    if (!a.shape.contentEquals(b.shape)) throw PocketdiffError("shapes ${a.shape.toList()} and ${b.shape.toList()} differ")
    return Tensor(a.shape.copyOf(), FloatArray(x.size) { fn(x[it], y[it]) })
}

/** One named tensor of a component's interface; a String dim is symbolic (``batch_size``). */
class TensorSpec(val name: String, val shape: List<Any>, val dtype: String) {
    override fun toString() = "TensorSpec($name, $shape, $dtype)"

    companion object {
        /** From a manifest tensor entry (already checked by checkManifest). */
        fun fromPy(d: Map<*, *>): TensorSpec = TensorSpec(d["name"] as String,
            (d["shape"] as List<*>).map { if (it is Long) it.toInt() else it.toString() }, d["dtype"] as String)
    }
}

/** What the sampler loop needs of a component, whatever runs it. */
interface Session {
    val inputs: List<TensorSpec>
    val outputs: List<TensorSpec>
    /** The only batch a static-shape program takes (null: any batch); see [firstDim]. */
    val fixedBatch: Int?
    /** Named inputs (every declared input) -> named outputs. */
    fun run(feeds: Map<String, Tensor>): Map<String, Tensor>
    /** A name for messages (the model file). */
    val path: String get() = "session"
}

/** The batch of a static-shape interface: the first input's leading dim when it is a number. */
fun firstDim(specs: List<TensorSpec>): Int? = specs.firstOrNull()?.shape?.firstOrNull() as? Int

fun checkFeeds(path: String, specs: List<TensorSpec>, feeds: Map<String, Tensor>) {
    val missing = specs.map { it.name }.filter { it !in feeds }.toSortedSet()
    if (missing.isNotEmpty()) throw PocketdiffError("$path: missing inputs ${pyRepr(missing.toList())}")
}

/** Zeros of the declared output shapes, symbolic (batch) dims from the feeds' batch: a dry run's stand-in. */
class ShapeSession(override val inputs: List<TensorSpec>, override val outputs: List<TensorSpec>,
                   override val path: String = "shape session") : Session {
    override val fixedBatch: Int? get() = firstDim(inputs)

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        checkFeeds(path, inputs, feeds)
        val batch = inputs.firstOrNull { it.shape.isNotEmpty() && it.shape[0] !is Int }?.let { feeds.getValue(it.name).shape[0] }
            ?: fixedBatch ?: 1
        return outputs.associate { o ->
            val shape = o.shape.map { it as? Int ?: batch }.toIntArray()
            val n = shape.fold(1) { a, b -> a * b }
            o.name to (if (o.dtype.startsWith("int")) Tensor(shape, longs = LongArray(n)) else Tensor(shape, FloatArray(n)))
        }
    }
}
