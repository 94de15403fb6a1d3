"""The fedbench command line: one module per command, shared pieces in common.py."""
