"""Console script entry points."""
