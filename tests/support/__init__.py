"""Helpers shared by the test suite: real components, started and torn down by fixtures."""
