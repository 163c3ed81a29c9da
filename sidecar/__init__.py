"""mlwarden's sidecar proxy and command line (app layer)."""
