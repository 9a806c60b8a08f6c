"""Helpers shared across stages: the plugin-directory format, adapter save/load, hashing, row files."""
