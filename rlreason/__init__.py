"""rlreason: GRPO-style reinforcement learning from rule-checkable rewards."""

import os

# OpenMP threads that wait for work sleep instead of spinning (torch's CPU ops run on OpenMP). A
# spinning thread on a core another program needs slows both down by 10-20x (a 2-thread tiny-model
# build next to one busy loop: 20.8x); a sleeping one costs nothing measurable alone
# (docs/benchmarks.md, "A busy laptop"). It takes effect only if set before torch is imported, so
# here; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
