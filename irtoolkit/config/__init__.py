"""Configuration: recipes (safe YAML, ``_base_`` inheritance), option schemas along the model class hierarchy,
checks, resolution into a recipe plus a run context, and conversion of BasicSR / upstream recipes. Imports no model:
a model's keys come from its registered class's ``OPTION_SCHEMA``."""
