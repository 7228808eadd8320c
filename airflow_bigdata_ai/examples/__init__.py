"""Everything that exists only for the shipped examples, tests and benchmarks.

Datasets (scikit-learn digits, generated traffic scenes), their model factories and transforms, the demo,
the report and the example DAGs' Assets. A user's DAG never needs this package: the library's surface is
``airflow_bigdata_ai.operators``, ``hooks``, ``shards``, ``cluster``, ``preprocess``, ``train``, ``infer``.
"""
