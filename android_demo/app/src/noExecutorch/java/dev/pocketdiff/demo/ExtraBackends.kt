package dev.pocketdiff.demo

import java.io.File
import pocketdiff.core.Component
import pocketdiff.core.PocketdiffError
import pocketdiff.core.Session

/** The backends this build has besides ONNX: none (built without -Ppocketdiff.executorch=true). Its twin in
 *  src/executorch/ adds the bundle's `executorch` target. */
object ExtraBackends {
    val targets: List<String> = emptyList()

    fun open(target: String, component: Component, file: File): Session =
        throw PocketdiffError("this build has no $target runtime (build the app with -Ppocketdiff.executorch=true)")
}
