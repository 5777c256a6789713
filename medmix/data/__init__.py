"""Raw data → cohort: loaders (one per layout) and the cohort contract."""
