"""Data-in layer: reading and writing volumes, finding cases, and synthetic phantom data sets."""
