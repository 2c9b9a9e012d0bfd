"""Seed A's alignment suite: `python -m src.align <command>` and the library its stages share."""
