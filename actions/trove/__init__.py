"""Trove (database) actions."""
