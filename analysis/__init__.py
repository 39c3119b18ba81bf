"""Analysis of a sweep read from MLflow: overlap, size window, composition, plots and a report (DESIGN.md 1.3)."""
