"""mlwarden's inference middleware (library layer)."""
