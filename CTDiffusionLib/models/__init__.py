"""Denoising networks, their presets, condition vocabularies and the shareable model bundle."""
