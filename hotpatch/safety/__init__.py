"""Deciding when it is safe to switch code: pure logic over register and stack snapshots."""
