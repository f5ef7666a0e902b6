"""Glance (image) actions."""
