"""Tiny seeded WAN checkpoints in every convention, with ground truth, and the self test built on them."""
