package dev.pocketdiff.demo

import ai.onnxruntime.OrtEnvironment
import android.app.Application
import android.graphics.Bitmap
import android.net.Uri
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import java.io.File
import java.util.concurrent.atomic.AtomicBoolean
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import pocketdiff.core.Bundle
import pocketdiff.core.Cancelled
import pocketdiff.core.Component
import pocketdiff.core.GenerationResult
import pocketdiff.core.PocketdiffError
import pocketdiff.core.RuntimePipeline
import pocketdiff.core.Session

/** Everything the screen shows. Text fields stay text: the core checks steps ("4" or "auto[:...]"). */
data class UiState(
    val status: String = "Starting…",
    val error: String? = null,
    val busy: Boolean = false,  // installing, verifying or opening sessions
    val generating: Boolean = false,
    val ready: Boolean = false,  // a pipeline is open
    val bundleInfo: String = "",
    val targets: List<String> = emptyList(),
    val target: String = "",
    val prompt: String = "a red circle",
    val steps: String = "",
    val guidance: String = "",
    val seed: String = "0",
    val progress: Float = 0f,
    val image: Bitmap? = null,
    val timings: List<Pair<String, Double>> = emptyList(),  // stage -> seconds, in the core's order
    val calls: Int = 0,
)

/**
 * Holds the verified bundle, the open pipeline and its sessions. Installing and opening run on Dispatchers.IO,
 * generation on Dispatchers.Default; the core's sampler loop is the one the JVM tests replay. Cancel sets a flag
 * that the core's progress callback returns (false stops the loop after the current step; the core then throws
 * [Cancelled] and decodes nothing).
 */
class GenerateViewModel(private val app: Application) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state.asStateFlow()

    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val lock = Any()  // one generation, install or session swap at a time
    private val cancelRequested = AtomicBoolean(false)
    private var bundle: Bundle? = null
    private var pipeline: RuntimePipeline? = null
    private var sessions: List<AutoCloseable> = emptyList()

    init {
        work("Looking for a bundle…") {
            val found = BundleInstaller.startup(app) { report(it) }
            found.warning?.let { w -> _state.update { it.copy(error = w) } }
            val b = found.bundle
            if (b == null) {
                _state.update {
                    it.copy(status = "No bundle. Push one to ${BundleInstaller.pushedDir(app)} and restart, " +
                        "or pick a bundle folder.")
                }
            } else {
                useBundle(b)
            }
        }
    }

    fun onPrompt(v: String) = _state.update { it.copy(prompt = v) }
    fun onSteps(v: String) = _state.update { it.copy(steps = v) }
    fun onGuidance(v: String) = _state.update { it.copy(guidance = v) }
    fun onSeed(v: String) = _state.update { it.copy(seed = v) }

    /** A folder from the system picker: copied into private storage, verified, then used. */
    fun installFromTree(uri: Uri) = work("Copying the picked folder…") {
        useBundle(BundleInstaller.installFromTree(app, uri) { report(it) })
    }

    fun selectTarget(target: String) {
        val b = bundle ?: return
        if (target == _state.value.target) return
        work("Opening the $target sessions…") { openPipeline(b, target) }
    }

    fun generate() {
        val s = _state.value
        val p = pipeline ?: return
        if (s.busy || s.generating) return
        val guidance = s.guidance.trim().toFloatOrNull()
        val seed = s.seed.trim().toLongOrNull()
        if (guidance == null || seed == null) {
            _state.update { it.copy(error = if (guidance == null) "guidance must be a number" else "seed must be an integer") }
            return
        }
        cancelRequested.set(false)
        _state.update { it.copy(generating = true, error = null, progress = 0f, status = "Encoding the prompt…") }
        viewModelScope.launch(Dispatchers.Default) {
            try {
                val result = synchronized(lock) {
                    p.generate(s.prompt, s.steps.trim(), guidance, seed, callback = { done, total ->
                        _state.update { it.copy(progress = done.toFloat() / total, status = "Step $done of $total") }
                        !cancelRequested.get()
                    })
                }
                val bitmap = toBitmap(result)
                _state.update {
                    it.copy(image = bitmap, timings = result.timings.toList(), calls = result.trace.size,
                        status = "Done: ${result.steps} steps, ${result.width}×${result.height}")
                }
            } catch (e: Cancelled) {
                _state.update { it.copy(status = "Cancelled") }
            } catch (e: Throwable) {
                _state.update { it.copy(status = "Failed", error = message(e)) }
            } finally {
                _state.update { it.copy(generating = false) }
            }
        }
    }

    fun cancel() {
        if (!_state.value.generating) return
        cancelRequested.set(true)
        _state.update { it.copy(status = "Cancelling after this step…") }
    }

    override fun onCleared() {
        cancelRequested.set(true)
        // A generation still running holds the lock: close its sessions once it has stopped, off the main thread.
        Thread { synchronized(lock) { closeSessions() } }.start()
    }

    // ---- internals ----

    private fun report(message: String) = _state.update { it.copy(status = message) }

    private fun work(status: String, body: () -> Unit) {
        _state.update { it.copy(busy = true, status = status, error = null) }
        viewModelScope.launch(Dispatchers.IO) {
            try {
                synchronized(lock) { body() }
            } catch (e: Throwable) {
                _state.update { it.copy(status = "Failed", error = message(e)) }
            } finally {
                _state.update { it.copy(busy = false) }
            }
        }
    }

    /** Called with [lock] held. Steps and guidance come from the manifest's `defaults` (a bundle's pinned ones). */
    private fun useBundle(b: Bundle) {
        val m = b.manifest
        val inBundle = m.getAsJsonArray("components").map { it.asJsonObject.get("target").asString }.distinct()
        val usable = (listOf("onnx") + ExtraBackends.targets).filter { it in inBundle }
        if (usable.isEmpty()) {
            throw PocketdiffError("the bundle has components for ${inBundle.joinToString()} only; this app runs " +
                (listOf("onnx") + ExtraBackends.targets).joinToString())
        }
        val defaults = m.getAsJsonObject("defaults")
        val model = m.getAsJsonObject("model")
        val size = model?.getAsJsonArray("image_size")?.joinToString("×") { it.asString } ?: "?"
        val policy = m.getAsJsonObject("sampler")?.get("policy")?.asString ?: "?"
        closeSessions()
        bundle = b
        _state.update {
            it.copy(targets = usable, steps = defaults.get("steps").asString, guidance = defaults.get("guidance").asString,
                bundleInfo = "Bundle: $size, policy $policy, targets ${inBundle.joinToString()}" +
                    (if (BundleInstaller.trustedKey(app) != null) ", signature verified" else ", signature not checked (no trusted key in the APK)"))
        }
        openPipeline(b, usable.first())
    }

    /** Called with [lock] held. Opens every session the pipeline needs; on failure closes what was opened. */
    private fun openPipeline(b: Bundle, target: String) {
        closeSessions()
        _state.update { it.copy(ready = false, target = target, status = "Opening the $target sessions…") }
        val opened = ArrayList<AutoCloseable>()
        try {
            pipeline = RuntimePipeline.fromBundle(b, target, open = { component: Component, file: File ->
                val session: Session = if (target == "onnx") OnnxSession(env, file, component)
                else ExtraBackends.open(target, component, file)
                (session as? AutoCloseable)?.let { opened += it }
                session
            })
        } catch (e: Throwable) {
            opened.forEach { runCatching { it.close() } }
            throw e
        }
        sessions = opened
        _state.update { it.copy(ready = true, status = "Ready ($target)") }
    }

    private fun closeSessions() {
        pipeline = null
        sessions.forEach { runCatching { it.close() } }
        sessions = emptyList()
    }

    private fun message(e: Throwable): String =
        if (e is PocketdiffError) e.message ?: "error" else "${e.javaClass.simpleName}: ${e.message}"

    companion object {
        /** The core's HWC uint8 RGB image as an opaque ARGB bitmap. */
        fun toBitmap(r: GenerationResult): Bitmap {
            val n = r.height * r.width
            if (r.image.size != 3 * n) throw PocketdiffError("image has ${r.image.size} bytes for ${r.height}×${r.width}×3")
            val px = IntArray(n) { i ->
                val red = r.image[3 * i].toInt() and 0xff
                val green = r.image[3 * i + 1].toInt() and 0xff
                val blue = r.image[3 * i + 2].toInt() and 0xff
                (0xff shl 24) or (red shl 16) or (green shl 8) or blue
            }
            return Bitmap.createBitmap(px, r.width, r.height, Bitmap.Config.ARGB_8888)
        }
    }
}
