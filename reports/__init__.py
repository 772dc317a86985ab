"""MLflow logging, plots and the HTML report (``boundfinder.reports``).

* :mod:`boundfinder.reports.html`: one self-contained HTML file per sweep or search (charts embedded as PNG data);
* :mod:`boundfinder.reports.mlflow_log`: one MLflow run per sweep or search, with accuracy against bits as
  stepped metrics, the bound as metrics, and the charts, summary and report as artifacts. MLflow is imported
  only when logging (the ``mlflow`` extra).
"""
