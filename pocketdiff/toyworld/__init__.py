"""The toy world: procedural captioned images with known attributes, and the models trained on it."""
