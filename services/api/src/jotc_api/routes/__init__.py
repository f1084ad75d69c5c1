"""Route modules, one per area: jumps (the puzzle), operations (health, metrics, docs)."""
