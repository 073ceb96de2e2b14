"""Command-line interface (click): option groups, logging, progress and exit codes."""
