"""One TaskConfig per model family; main.py discovers every TaskConfig subclass in this package."""
