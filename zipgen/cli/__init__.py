"""The `zipgen` command line."""
