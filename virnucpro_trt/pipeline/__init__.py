"""The three jobs: ``prepare`` (CPU only), ``embed`` (one encoder) and ``predict`` (the whole classifier)."""
