"""Data sets. `shapes` is the embedded, procedurally generated default."""
