"""Preference data: the pairs schema, source loaders, recipes and the synthetic generator."""
