"""The operations a user runs: apply, revert, list, build. Each reads top to bottom."""
