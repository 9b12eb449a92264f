import service  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads; see service/__init__.py)
