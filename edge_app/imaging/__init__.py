"""Image work before and around the networks: preprocessing, flat field, box refinement, framing, quality, motion."""
