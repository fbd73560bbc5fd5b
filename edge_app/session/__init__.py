"""One count: the per-frame pipeline, the live run (open, resume, finalise) and its report."""
