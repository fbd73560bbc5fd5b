"""Counting: the tracker (slide geometry, one track per cell) and the tally (votes, differential, CIs)."""
