"""Multi-turn rollouts where the model calls tools (issue 32): parse.py reads calls and renders
results in the chat template's format, loop.py runs the turns over any RolloutEngine."""
