"""The toy world: procedural captioned images with known attributes, and the models trained on it."""

from pathlib import Path

# The shipped toy teacher (`pocketdiff toy train-teacher` output): pipeline/, clip/, checker/, recipe.json.
TOY_TEACHER_DIR = Path(__file__).parent / "assets"
# The teacher's best guidance scale at 50 DDIM steps (see docs/toy_teacher.md for the sweep).
TEACHER_GUIDANCE = 2.0  # chosen by a guidance sweep at 25 DDIM steps (docs/toy_teacher.md)
