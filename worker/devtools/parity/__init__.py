"""Token-for-token parity between the worker and each family's reference pipeline (issue 17): seeded real
weights for a model folder, the reference run, the worker run end to end, and their comparison."""
