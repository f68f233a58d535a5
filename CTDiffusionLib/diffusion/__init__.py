"""Noise schedules, training targets and samplers (diffusers schedulers; models stay separate)."""
