package dev.pocketdiff.demo

import android.content.Context
import android.net.Uri
import androidx.documentfile.provider.DocumentFile
import java.io.File
import java.io.FileNotFoundException
import java.io.InputStream
import java.nio.file.Files
import pocketdiff.core.Bundle
import pocketdiff.core.PocketdiffError

/**
 * Puts a bundle (the folder `pocketdiff export --out BUNDLE` wrote) into the app's private storage and loads it.
 *
 * Sources, in the order [startup] tries them:
 * 1. a *pushed* folder, `<external files dir>/bundle` (`adb push BUNDLE /sdcard/Android/data/dev.pocketdiff.demo/files/bundle`),
 *    installed when its `manifest.json` differs from the installed bundle's, then deleted;
 * 2. the APK's assets, `assets/bundle/`, installed when no bundle is installed yet;
 * 3. the installed bundle as it is.
 * A folder picked in the system picker ([installFromTree]) replaces the installed bundle on request.
 *
 * Every install copies into a new folder `filesDir/bundles/<n>` and runs `Bundle.load(dir, trustedKey)` on the copy
 * (the core's checks: manifest structure, paths confined to the bundle, every file's size and sha256, and the
 * Ed25519 signature when a trusted key is set) before the file `filesDir/bundles/current` names it; a bundle that
 * fails is deleted and the previous one stays. The same `Bundle.load` runs on every start, before any session opens.
 *
 * The trusted key: `assets/trusted_key.pub`, the 64 hex characters `pocketdiff keygen` writes to `KEY.pub`. When the
 * APK carries one, unsigned bundles and bundles signed by another key are refused.
 */
object BundleInstaller {
    private const val BUNDLE = "bundle"
    private const val MANIFEST = "manifest.json"
    private const val KEY_ASSET = "trusted_key.pub"

    /** Progress of a copy: a line for the UI. */
    fun interface Progress { fun report(message: String) }

    fun pushedDir(ctx: Context): File? = ctx.getExternalFilesDir(null)?.let { File(it, BUNDLE) }

    private fun root(ctx: Context) = File(ctx.filesDir, "bundles")
    private fun pointer(ctx: Context) = File(root(ctx), "current")

    fun installedDir(ctx: Context): File? {
        val name = pointer(ctx).takeIf { it.isFile }?.readText()?.trim().orEmpty()
        return if (name.isEmpty()) null else File(root(ctx), name).takeIf { it.isDirectory }
    }

    /** The raw 32-byte Ed25519 public key from `assets/trusted_key.pub`, or null when the APK has none. */
    fun trustedKey(ctx: Context): ByteArray? {
        val text = try {
            ctx.assets.open(KEY_ASSET).use { String(it.readBytes(), Charsets.US_ASCII) }.trim()
        } catch (e: FileNotFoundException) {
            return null
        }
        if (!Regex("[0-9a-fA-F]{64}").matches(text)) {
            throw PocketdiffError("assets/$KEY_ASSET must hold 64 hex characters (an Ed25519 public key), got ${text.length} characters")
        }
        return ByteArray(32) { i -> text.substring(2 * i, 2 * i + 2).toInt(16).toByte() }
    }

    /** What [startup] found: the verified bundle (null: none anywhere) and why a pushed one was refused, if it was. */
    class Startup(val bundle: Bundle?, val warning: String?)

    /** The bundle to use at start (see the class comment), verified. A pushed folder that installs is deleted
     *  afterwards (a bundle can be gigabytes; one copy is enough); one that is refused stays, and the installed
     *  bundle is used with a warning. */
    fun startup(ctx: Context, progress: Progress): Startup {
        var warning: String? = null
        val pushed = pushedDir(ctx)?.takeIf { File(it, MANIFEST).isFile }
        val before = installedDir(ctx)
        if (pushed != null && (before == null || !sameManifest(File(pushed, MANIFEST), File(before, MANIFEST)))) {
            try {
                val bundle = installFromFolder(ctx, pushed, progress)
                pushed.deleteRecursively()
                return Startup(bundle, null)
            } catch (e: Exception) {
                warning = "the pushed bundle in $pushed was refused: ${e.message}"
            }
        }
        val installed = installedDir(ctx)
            ?: return Startup(if (assetExists(ctx, "$BUNDLE/$MANIFEST")) installFromAssets(ctx, progress) else null, warning)
        progress.report("Verifying the installed bundle…")
        return Startup(Bundle.load(installed, trustedKey(ctx)), warning)
    }

    fun installFromAssets(ctx: Context, progress: Progress): Bundle = install(ctx, progress) { dest ->
        copyAsset(ctx, BUNDLE, dest, progress, Counter())
    }

    fun installFromFolder(ctx: Context, src: File, progress: Progress): Bundle = install(ctx, progress) { dest ->
        if (!File(src, MANIFEST).isFile) throw PocketdiffError("$src has no $MANIFEST: pick the folder `pocketdiff export` wrote")
        copyFolder(src, dest, progress, Counter())
    }

    fun installFromTree(ctx: Context, tree: Uri, progress: Progress): Bundle = install(ctx, progress) { dest ->
        val top = DocumentFile.fromTreeUri(ctx, tree) ?: throw PocketdiffError("cannot open the picked folder $tree")
        if (top.findFile(MANIFEST)?.isFile != true) {
            throw PocketdiffError("the picked folder ${top.name} has no $MANIFEST: pick the folder `pocketdiff export` wrote")
        }
        copyTree(ctx, top, dest, progress, Counter())
    }

    /** Copy into a fresh folder, verify it there, then make it current and delete the others. */
    private fun install(ctx: Context, progress: Progress, copy: (File) -> Unit): Bundle {
        val root = root(ctx).apply { mkdirs() }
        val dest = File(root, "b" + System.currentTimeMillis())
        try {
            dest.mkdirs()
            copy(dest)
            progress.report("Verifying the bundle (sizes, sha256, signature)…")
            val bundle = Bundle.load(dest, trustedKey(ctx))
            val tmp = File(root, "current.tmp")
            tmp.writeText(dest.name + "\n")
            if (!tmp.renameTo(pointer(ctx))) throw PocketdiffError("cannot update ${pointer(ctx)}")
            root.listFiles()?.filter { it.isDirectory && it.name != dest.name }?.forEach { it.deleteRecursively() }
            return bundle
        } catch (e: Throwable) {
            dest.deleteRecursively()
            throw e
        }
    }

    private class Counter { var files = 0; var bytes = 0L }

    private fun copyStream(input: InputStream, to: File, progress: Progress, n: Counter) {
        to.outputStream().use { out ->
            val buf = ByteArray(1 shl 20)
            while (true) {
                val k = input.read(buf)
                if (k < 0) break
                out.write(buf, 0, k)
                n.bytes += k
            }
        }
        n.files += 1
        progress.report("Copying the bundle: ${n.files} files, ${n.bytes shr 20} MiB")
    }

    private fun safeName(name: String?, where: String): String {
        if (name.isNullOrEmpty() || name == "." || name == ".." || '/' in name || '\\' in name || '\u0000' in name) {
            throw PocketdiffError("$where: refusing the entry name ${name ?: "(none)"}")
        }
        return name
    }

    private fun assetExists(ctx: Context, path: String): Boolean =
        try { ctx.assets.open(path).close(); true } catch (e: FileNotFoundException) { false }

    /** AssetManager has no "is a directory": a path that lists children is one; one that does not is a file
     *  (or an empty folder, which `open` refuses and is made empty here). */
    private fun copyAsset(ctx: Context, path: String, dest: File, progress: Progress, n: Counter) {
        dest.mkdirs()
        for (child in ctx.assets.list(path).orEmpty()) {
            val name = safeName(child, "assets/$path")
            val sub = "$path/$name"
            val kids = ctx.assets.list(sub).orEmpty()
            if (kids.isNotEmpty()) {
                copyAsset(ctx, sub, File(dest, name), progress, n)
            } else {
                try {
                    ctx.assets.open(sub).use { copyStream(it, File(dest, name), progress, n) }
                } catch (e: FileNotFoundException) {
                    File(dest, name).mkdirs()
                }
            }
        }
    }

    /** A plain folder (the pushed one). Symbolic links are refused rather than followed: a bundle's files are its own. */
    private fun copyFolder(src: File, dest: File, progress: Progress, n: Counter) {
        dest.mkdirs()
        for (f in src.listFiles().orEmpty()) {
            val name = safeName(f.name, src.path)
            if (Files.isSymbolicLink(f.toPath())) throw PocketdiffError("$f is a symbolic link; copy the bundle without links")
            when {
                f.isDirectory -> copyFolder(f, File(dest, name), progress, n)
                f.isFile -> f.inputStream().use { copyStream(it, File(dest, name), progress, n) }
            }
        }
    }

    /** A folder picked through the Storage Access Framework. */
    private fun copyTree(ctx: Context, dir: DocumentFile, dest: File, progress: Progress, n: Counter) {
        dest.mkdirs()
        for (doc in dir.listFiles()) {
            val name = safeName(doc.name, dir.name ?: "picked folder")
            when {
                doc.isDirectory -> copyTree(ctx, doc, File(dest, name), progress, n)
                doc.isFile -> {
                    val input = ctx.contentResolver.openInputStream(doc.uri)
                        ?: throw PocketdiffError("cannot read ${doc.name} in the picked folder")
                    input.use { copyStream(it, File(dest, name), progress, n) }
                }
            }
        }
    }

    private fun sameManifest(a: File, b: File): Boolean =
        a.isFile && b.isFile && a.length() == b.length() && a.readBytes().contentEquals(b.readBytes())
}
