"""Experiments: the pure core of cold-start A/B tests — arms and assignment, policies, statistics, interleaving,
reports and the offline replay (the API and the CLI are its edges)."""
