"""Data steps: import raw datasets into a manifest, the built-in sample, validation, cropping."""
