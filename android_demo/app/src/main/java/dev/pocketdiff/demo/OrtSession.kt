package dev.pocketdiff.demo

import ai.onnxruntime.NodeInfo
import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.DoubleBuffer
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer
import pocketdiff.core.Component
import pocketdiff.core.PocketdiffError
import pocketdiff.core.Session
import pocketdiff.core.Tensor
import pocketdiff.core.TensorSpec

/**
 * The core's [Session] over onnxruntime-android: one bundle component's `.onnx` file, named core [Tensor]s in and out.
 * The Kotlin twin of `pocketdiff/runtime/sessions.py`'s `OnnxSession`.
 *
 * Like the Python session it casts each feed to the dtype the *graph* declares, so the sampler passes natural types
 * whatever the exporter chose: token ids (int64 in the core) become int32 or int64, float32 latents stay float32
 * (float16 when a graph was exported without fp32 I/O), and a one-element timestep takes the graph's own shape
 * (`[]` for the ONNX UNet's scalar, `[1]` elsewhere). The declared shapes, symbolic batch included, come from the
 * bundle manifest's component specs (ONNX Runtime's Java API reports a symbolic dim only as -1); the dtypes come
 * from the graph. Outputs come back as float32 (`floats`) or int64 (`longs`) core tensors.
 *
 * Not thread-safe for concurrent [run]s on one instance (the ViewModel runs one generation at a time).
 */
class OnnxSession(
    private val env: OrtEnvironment,
    private val file: File,
    component: Component,
    threads: Int = 0,
) : Session, AutoCloseable {

    private val session: OrtSession = open(env, file, threads)

    override val inputs: List<TensorSpec> = specs(session.inputInfo, component.inputs)
    override val outputs: List<TensorSpec> = specs(session.outputInfo, component.outputs)

    /** The only batch a static-shape graph takes (its first input's leading dim), null when the batch is symbolic. */
    override val fixedBatch: Int?
        get() = inputs.firstOrNull()?.shape?.firstOrNull() as? Int

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        val missing = inputs.map { it.name }.filter { it !in feeds }.sorted()
        if (missing.isNotEmpty()) throw PocketdiffError("$file: missing inputs $missing")
        val created = ArrayList<OnnxTensor>(inputs.size)
        try {
            val ortFeeds = LinkedHashMap<String, OnnxTensor>()
            for (spec in inputs) {
                val t = toOrt(spec, feeds.getValue(spec.name))
                created += t
                ortFeeds[spec.name] = t
            }
            val result = try {
                session.run(ortFeeds)
            } catch (e: OrtException) {
                throw PocketdiffError("$file: onnxruntime failed: ${e.message}")
            }
            try {
                val out = LinkedHashMap<String, Tensor>()
                for (spec in outputs) {
                    val value = result.get(spec.name).orElse(null) as? OnnxTensor
                        ?: throw PocketdiffError("$file: no tensor output ${spec.name}")
                    out[spec.name] = fromOrt(value)
                }
                return out
            } finally {
                result.close()  // closes its output tensors too
            }
        } finally {
            created.forEach { it.close() }
        }
    }

    override fun close() = session.close()

    // ---- feeds: core Tensor -> OnnxTensor of the declared dtype and shape ----

    private fun toOrt(spec: TensorSpec, t: Tensor): OnnxTensor {
        val shape = feedShape(spec, t.shape)
        val count = t.shape.fold(1L) { a, d -> a * d }.toInt()
        return when (spec.dtype) {
            "float32" -> OnnxTensor.createTensor(env, FloatBuffer.wrap(floatsOf(spec, t, count)), shape)
            "float16" -> {
                val bytes = ByteBuffer.allocateDirect(2 * count).order(ByteOrder.nativeOrder())
                val halves = bytes.asShortBuffer()
                for (v in floatsOf(spec, t, count)) halves.put(floatToHalf(v))
                OnnxTensor.createTensor(env, bytes, shape, OnnxJavaType.FLOAT16)
            }
            "float64" -> {
                val f = floatsOf(spec, t, count)
                OnnxTensor.createTensor(env, DoubleBuffer.wrap(DoubleArray(count) { f[it].toDouble() }), shape)
            }
            "int64" -> OnnxTensor.createTensor(env, LongBuffer.wrap(longsOf(spec, t, count)), shape)
            "int32" -> {
                val l = longsOf(spec, t, count)
                OnnxTensor.createTensor(env, IntBuffer.wrap(IntArray(count) { l[it].toInt() }), shape)
            }
            else -> throw PocketdiffError("$file: input ${spec.name} has dtype ${spec.dtype}, which this app cannot feed")
        }
    }

    /** The feed's shape, checked against the declared one; a one-element feed takes a fixed declared shape
     *  of another rank (a timestep given as [] or [1]). */
    private fun feedShape(spec: TensorSpec, given: IntArray): LongArray {
        val declared = spec.shape
        val fixed = declared.all { it is Int }
        val count = given.fold(1L) { a, d -> a * d }
        if (declared.size != given.size) {
            val declaredCount = declared.fold(1L) { a, d -> a * ((d as? Int) ?: 0) }
            if (fixed && declaredCount == count) return LongArray(declared.size) { (declared[it] as Int).toLong() }
            throw shapeError(spec, given)
        }
        for (i in declared.indices) {
            val d = declared[i]
            if (d is Int && d != given[i]) throw shapeError(spec, given)
        }
        return LongArray(given.size) { given[it].toLong() }
    }

    private fun shapeError(spec: TensorSpec, given: IntArray) = PocketdiffError(
        "$file: input ${spec.name} has shape ${given.toList()}; this model was exported for ${spec.shape}")

    private fun floatsOf(spec: TensorSpec, t: Tensor, count: Int): FloatArray {
        val f = t.floats ?: t.longs?.let { l -> FloatArray(l.size) { l[it].toFloat() } }
        ?: throw PocketdiffError("$file: input ${spec.name} has no data")
        if (f.size != count) throw PocketdiffError("$file: input ${spec.name} has ${f.size} values for shape ${t.shape.toList()}")
        return f
    }

    private fun longsOf(spec: TensorSpec, t: Tensor, count: Int): LongArray {
        val l = t.longs ?: t.floats?.let { f -> LongArray(f.size) { f[it].toLong() } }
        ?: throw PocketdiffError("$file: input ${spec.name} has no data")
        if (l.size != count) throw PocketdiffError("$file: input ${spec.name} has ${l.size} values for shape ${t.shape.toList()}")
        return l
    }

    // ---- outputs: OnnxTensor -> core Tensor (float32 or int64) ----

    private fun fromOrt(value: OnnxTensor): Tensor {
        val info = value.info
        val shape = IntArray(info.shape.size) { info.shape[it].toInt() }
        return when (info.type) {
            // getFloatBuffer widens fp16/bf16 to float32 itself
            OnnxJavaType.FLOAT, OnnxJavaType.FLOAT16, OnnxJavaType.BFLOAT16 -> Tensor(shape, floats = copy(value.floatBuffer))
            OnnxJavaType.DOUBLE -> {
                val d = value.doubleBuffer
                Tensor(shape, floats = FloatArray(d.remaining()) { d.get(it).toFloat() })
            }
            OnnxJavaType.INT64 -> {
                val l = value.longBuffer
                Tensor(shape, longs = LongArray(l.remaining()).also { l.get(it) })
            }
            OnnxJavaType.INT32 -> {
                val i = value.intBuffer
                Tensor(shape, longs = LongArray(i.remaining()) { i.get(it).toLong() })
            }
            else -> throw PocketdiffError("$file: an output of type ${info.type} cannot be read")
        }
    }

    private fun copy(buf: FloatBuffer?): FloatArray {
        val b = buf ?: throw PocketdiffError("$file: a float output could not be read")
        return FloatArray(b.remaining()).also { b.get(it) }
    }

    companion object {
        private fun open(env: OrtEnvironment, file: File, threads: Int): OrtSession {
            if (!file.isFile) throw PocketdiffError("ONNX model $file does not exist")
            val opts = OrtSession.SessionOptions()
            try {
                opts.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
                if (threads > 0) {
                    opts.setIntraOpNumThreads(threads)
                    opts.setInterOpNumThreads(1)
                }
                return env.createSession(file.path, opts)
            } catch (e: OrtException) {
                throw PocketdiffError("cannot load ONNX model $file: ${e.message}")
            } finally {
                opts.close()
            }
        }

        /** The graph's I/O in its order: the manifest spec of the same name gives the shape (symbols kept),
         *  the graph gives the dtype; a name the manifest lacks keeps the graph's shape (-1 -> a symbol). */
        private fun specs(graph: Map<String, NodeInfo>, declared: List<TensorSpec>): List<TensorSpec> =
            graph.map { (name, node) ->
                val info = node.info as? TensorInfo
                    ?: throw PocketdiffError("graph input/output $name is not a tensor")
                val shape: List<Any> = declared.firstOrNull { it.name == name }?.shape
                    ?: info.shape.mapIndexed<Any> { i, d -> if (d >= 0) d.toInt() else if (i == 0) "batch_size" else "dim$i" }
                TensorSpec(name, shape, dtypeName(name, info))
            }

        private fun dtypeName(name: String, info: TensorInfo): String = when (info.type) {
            OnnxJavaType.FLOAT -> "float32"
            OnnxJavaType.FLOAT16 -> "float16"
            OnnxJavaType.DOUBLE -> "float64"
            OnnxJavaType.INT32 -> "int32"
            OnnxJavaType.INT64 -> "int64"
            else -> throw PocketdiffError("graph tensor $name has type ${info.type}, which this app does not handle")
        }

        /** IEEE 754 binary16 of a float, rounded to nearest even (subnormals kept, overflow to infinity). */
        internal fun floatToHalf(f: Float): Short {
            val bits = java.lang.Float.floatToRawIntBits(f)
            val sign = (bits ushr 16) and 0x8000
            val exp = (bits ushr 23) and 0xff
            val mant = bits and 0x7fffff
            if (exp == 0xff) return (sign or 0x7c00 or (if (mant != 0) 0x200 else 0)).toShort()  // inf / nan
            val e = exp - 127 + 15
            if (e >= 0x1f) return (sign or 0x7c00).toShort()  // overflow
            if (e <= 0) {  // subnormal half (or zero)
                if (e < -10) return sign.toShort()
                val m = mant or 0x800000
                val shift = 14 - e
                var h = m ushr shift
                val rem = m and ((1 shl shift) - 1)
                val half = 1 shl (shift - 1)
                if (rem > half || (rem == half && (h and 1) == 1)) h += 1
                return (sign or h).toShort()
            }
            var h = (e shl 10) or (mant ushr 13)
            val rem = mant and 0x1fff
            if (rem > 0x1000 || (rem == 0x1000 && (h and 1) == 1)) h += 1  // may carry into the exponent: correct
            return (sign or h).toShort()
        }
    }
}
