"""Analysis of a sweep read from MLflow: overlap, size window, composition, plots and a report (docs/design.md §5)."""
