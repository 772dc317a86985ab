"""MLflow logging, plots and the HTML report (``boundfinder.reports``)."""
