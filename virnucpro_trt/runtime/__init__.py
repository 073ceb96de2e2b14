"""Run time: devices and precisions, token-budget batching, and the embedding backends."""
