// Prompt, steps, guidance and seed (defaults from the manifest), Generate / Cancel, progress, the image and the
// per-stage timings; a folder picker for another bundle.
import SwiftUI
import UniformTypeIdentifiers

struct ContentView: View {
    @ObservedObject var model: GeneratorModel
    @State private var picking = false

    var body: some View {
        NavigationStack {
            Form {
                Section("Prompt") {
                    TextField("Prompt", text: $model.prompt, axis: .vertical)
                    TextField("Negative prompt (CFG only)", text: $model.negativePrompt)
                }
                Section("Settings") {
                    Stepper("Steps: \(model.steps)", value: $model.steps, in: 1...100)
                    HStack {
                        Text("Guidance")
                        TextField("Guidance", value: $model.guidance, format: .number).multilineTextAlignment(.trailing)
                    }
                    HStack {
                        Text("Seed")
                        TextField("Seed", value: $model.seed, format: .number).multilineTextAlignment(.trailing)
                    }
                }
                Section {
                    if model.running {
                        ProgressView(value: model.progress)
                        Button("Cancel", role: .destructive) { model.cancel() }
                    } else {
                        Button("Generate") { model.generate() }.disabled(!model.loaded)
                    }
                    Text(model.status).font(.footnote).foregroundStyle(.secondary)
                }
                if let image = model.image {
                    Section("Image") {
                        Image(decorative: image, scale: 1)
                            .interpolation(.none)
                            .resizable()
                            .aspectRatio(contentMode: .fit)
                    }
                }
                if !model.timings.isEmpty {
                    Section("Timings") {
                        ForEach(model.timings.indices, id: \.self) { i in
                            LabeledContent(model.timings[i].0, value: String(format: "%.1f ms", model.timings[i].1 * 1000))
                        }
                    }
                }
            }
            .navigationTitle("pocketdiff")
            .toolbar {
                Button("Open bundle…") { picking = true }.disabled(model.running)
            }
            .fileImporter(isPresented: $picking, allowedContentTypes: [.folder]) { result in
                if case .success(let url) = result { Task { await model.load(url) } }
            }
        }
    }
}
