"""Studies: one-off experiments and sweeps; their protocols and findings are in README.md here."""
