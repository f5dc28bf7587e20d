package dev.pocketdiff.demo

import java.io.File
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import pocketdiff.core.Component
import pocketdiff.core.PocketdiffError
import pocketdiff.core.Session
import pocketdiff.core.Tensor
import pocketdiff.core.TensorSpec

// UNVERIFIED: compiled only with -Ppocketdiff.executorch=true, and never built or run in the pocketdiff repository
// (no Android SDK there). Written against the ExecuTorch Android AAR's Java API (org.pytorch:executorch-android:
// Module.load(path), Module.forward(EValue...), Tensor.fromBlob(array, shape), EValue.toTensor()).

/** The backends this build has besides ONNX: the `.pte` programs in the bundle's executorch folder. */
object ExtraBackends {
    val targets: List<String> = listOf("executorch")

    fun open(target: String, component: Component, file: File): Session =
        if (target == "executorch") ExecuTorchSession(file, component)
        else throw PocketdiffError("this build has no $target runtime")
}

/**
 * The core's [Session] over an ExecuTorch program's `forward`, the Kotlin twin of `sessions.py`'s
 * `ExecuTorchSession`: the manifest's specs, in call order, are the interface; programs are exported with static
 * shapes, so a feed must have exactly the declared shape (a one-element feed takes the declared `[]` or `[1]`).
 * fp32 and integer inputs only (an fp16 program's half inputs are not handled here).
 */
class ExecuTorchSession(private val file: File, component: Component) : Session, AutoCloseable {
    private val module: Module = try {
        if (!file.isFile) throw PocketdiffError("ExecuTorch program $file does not exist")
        Module.load(file.path)
    } catch (e: PocketdiffError) {
        throw e
    } catch (e: Exception) {
        throw PocketdiffError("cannot load ExecuTorch program $file: ${e.message}")
    }

    override val inputs: List<TensorSpec> = component.inputs
    override val outputs: List<TensorSpec> = component.outputs
    override val fixedBatch: Int?
        get() = inputs.firstOrNull()?.shape?.firstOrNull() as? Int

    override fun run(feeds: Map<String, Tensor>): Map<String, Tensor> {
        val args = inputs.map { spec ->
            val t = feeds[spec.name] ?: throw PocketdiffError("$file: missing inputs [${spec.name}]")
            EValue.from(toEt(spec, t))
        }
        val outs = try {
            module.forward(*args.toTypedArray())
        } catch (e: Exception) {
            throw PocketdiffError("$file: ExecuTorch failed: ${e.message}")
        }
        if (outs.size < outputs.size) throw PocketdiffError("$file: ${outs.size} outputs, the manifest lists ${outputs.size}")
        return outputs.withIndex().associate { (i, spec) ->
            val et = outs[i].toTensor()
            val shape = et.shape().map { it.toInt() }.toIntArray()
            spec.name to when (spec.dtype) {
                "int64" -> Tensor(shape, longs = et.dataAsLongArray)
                "int32" -> Tensor(shape, longs = et.dataAsIntArray.map { it.toLong() }.toLongArray())
                else -> Tensor(shape, floats = et.dataAsFloatArray)
            }
        }
    }

    override fun close() = module.destroy()

    private fun toEt(spec: TensorSpec, t: Tensor): org.pytorch.executorch.Tensor {
        val shape = spec.shape.map { (it as? Int)?.toLong() ?: throw PocketdiffError("$file: ${spec.name} has a symbolic dim") }
            .toLongArray()
        val count = t.shape.fold(1L) { a, d -> a * d }
        val declared = shape.fold(1L) { a, d -> a * d }
        if (count != declared || (t.shape.size == shape.size && t.shape.indices.any { t.shape[it].toLong() != shape[it] })) {
            throw PocketdiffError("$file: input ${spec.name} has shape ${t.shape.toList()}; this program was exported for ${spec.shape}")
        }
        val floats = t.floats ?: t.longs?.let { l -> FloatArray(l.size) { l[it].toFloat() } }
        val longs = t.longs ?: t.floats?.let { f -> LongArray(f.size) { f[it].toLong() } }
        return when (spec.dtype) {
            "float32" -> org.pytorch.executorch.Tensor.fromBlob(floats ?: noData(spec), shape)
            "int64" -> org.pytorch.executorch.Tensor.fromBlob(longs ?: noData(spec), shape)
            "int32" -> org.pytorch.executorch.Tensor.fromBlob((longs ?: noData(spec)).map { it.toInt() }.toIntArray(), shape)
            else -> throw PocketdiffError("$file: input ${spec.name} has dtype ${spec.dtype}, which this app cannot feed")
        }
    }

    private fun noData(spec: TensorSpec): Nothing = throw PocketdiffError("$file: input ${spec.name} has no data")
}
