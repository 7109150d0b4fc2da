"""Run configuration: the schema, the packaged recipes and presets, and the one step that
resolves a run's configuration from the data's facts, a recipe and the user's settings."""
