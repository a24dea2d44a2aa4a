"""Shared by every layer, importing none: errors, atomic file writes and numbers as text
(`files`), YAML as people write it (`yaml_loader`), which code made a file (`provenance`)."""
