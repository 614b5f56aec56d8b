"""The long-running apps: `serve` (the drawing page and its API) and `watch` (live run pages)."""
