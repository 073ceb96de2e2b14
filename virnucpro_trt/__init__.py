"""virnucpro-trt: VirNucPro's viral short-read classifier, same answers, compiled and multi-GPU.

The package is laid out by the stages a read goes through:
``sequences`` (read, validate, chunk, translate) -> ``models`` (DNABERT-S, ESM-2, classifier and their
checkpoint formats) -> ``runtime`` (devices, token-budget batching, embedding) -> ``outputs`` (upstream
files and the richer tables) -> ``pipeline`` (prepare / embed / predict), with ``cli`` on top.
"""

__version__ = "0.1.0"
