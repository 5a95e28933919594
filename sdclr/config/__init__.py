"""Layer 2: the configuration: its dataclass schema, derived values, validation, composition and
the drift check of a resumed run."""
