"""Scores and what a person reads: scoring, metrics, figures, report.html (map: effnet/__init__.py)."""
