"""A user's own project, outside the boundfinder package: the tests name its model, data and score functions by
import path (``tests.user_project.models:RowClassifier``) and by file (``tests/user_project/models.py:...``), as a
user would on the command line."""
