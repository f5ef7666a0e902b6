"""Nova (compute) actions."""
