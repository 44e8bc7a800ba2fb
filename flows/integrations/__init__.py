"""Adapters that let other libraries use `flows` models (each needs its own optional extra)."""
