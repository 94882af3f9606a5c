"""What a long run needs around the loop: checkpoints (atomic, checksummed), resume rules, the
run lock, stop signals, the host's cores and launcher, tracking (progress, metrics, plots,
report.html), and the end of a run (``finish``: final model, summary)."""
