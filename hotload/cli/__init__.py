"""The ``mistral-hotload`` command line (cliff)."""
