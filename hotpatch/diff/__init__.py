"""`build --diff`: what changed between two builds of a translation unit, and the patch object that carries it."""
