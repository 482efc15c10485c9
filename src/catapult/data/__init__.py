"""Data: the embedded default (scikit-learn digits) and readers for files a user already has."""
