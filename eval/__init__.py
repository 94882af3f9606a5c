"""Evaluation: benchmark suites, metrics, and scoring a rollout engine on them."""
