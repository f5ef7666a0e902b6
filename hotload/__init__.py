"""mistral-hotload: hot-loaded custom actions for OpenStack Mistral."""
