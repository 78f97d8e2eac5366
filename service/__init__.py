"""What users touch: the `chimera` CLI, bulk scans, the HTTP API."""
