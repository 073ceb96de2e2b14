"""Result files: upstream-compatible ones, the richer tables, run.json and HDF5 embeddings."""
