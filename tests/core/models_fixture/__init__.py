"""Model modules the model-loading tests load per app (tests/core/test_models.py)."""
