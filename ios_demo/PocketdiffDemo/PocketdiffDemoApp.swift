// The demo app: one window, one view model. Loads a pocketdiff bundle (the one added to the app, or a folder
// picked with the document picker), verifies it (manifest checks, every file's sha256, the signature when the app
// carries a trusted_key.pub), compiles its coreml/ components and generates on Core ML with PocketdiffCore's loop.
import SwiftUI

@main
struct PocketdiffDemoApp: App {
    @StateObject private var model = GeneratorModel()

    var body: some Scene {
        WindowGroup {
            ContentView(model: model)
                .task { await model.loadBundled() }
        }
    }
}
