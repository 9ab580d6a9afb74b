"""Per-device anomaly models: features, training, the registry, scoring runs."""
