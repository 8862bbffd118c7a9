"""One module per discovery method; each registers its ``DiscoveryMethod`` when imported."""
