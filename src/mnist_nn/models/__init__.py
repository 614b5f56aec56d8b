"""The networks and their registry, checkpoints (model.pt, state.pt), the bundled models, scoring."""
