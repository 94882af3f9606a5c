"""rlreason.loop."""
