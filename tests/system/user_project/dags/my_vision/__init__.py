"""My own code for my_vision_pipeline, in the DAGs folder beside the DAG file (not installed anywhere).

The operators ship it to the cluster with each job; an edited module takes effect on the next run.
"""

CLASSES = ("horizontal", "vertical", "checks")  # the label names used in labels.csv, in label order
