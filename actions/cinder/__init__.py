"""Cinder (block storage) actions."""
