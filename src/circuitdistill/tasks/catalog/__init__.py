"""One module per task; each registers its ``Task`` with ``tasks.registry.register`` when imported."""
