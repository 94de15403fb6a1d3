"""Where a round's local updates run: serially, in worker processes or on Ray; the one place processes start."""
