"""Deciding conventions: evidence, per-layer classification, reference matching, verdicts, the inspector."""
