"""Trials: leases handed to workers, their reports and results, recovery of lost ones."""
