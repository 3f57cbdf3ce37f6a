"""Studies: their specs, creation, status, trial listings and analysis."""
