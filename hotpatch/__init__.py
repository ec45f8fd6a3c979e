"""hotpatch: live patching of running Linux processes, function by function."""

__version__ = "0.1.0"
