"""OpenLineage datasets for the operators: where a task read and wrote, named by OpenLineage's conventions.

Operators record plain descriptors while they run (:class:`LineageRecorder`); the OpenLineage provider's
listener then calls ``get_openlineage_facets_on_complete`` and gets them as datasets. Names: a store URI
is ``file`` + path or ``s3://bucket`` + key (a ShardSet by its dataset folder, stable across reruns, not by
its per-attempt manifest); a table by its location, as Spark's OpenLineage integration names it, with a
symlink to its catalog name. Facets: the schema, and rows/bytes for outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_bigdata_ai.shards.paths import parse_uri


def store_dataset(
    uri: str, schema: dict[str, str] | None = None, rows: int | None = None, size: int | None = None
) -> dict[str, Any]:
    """A descriptor of a location in a shard store (``file://`` or ``s3://``)."""
    return {"uri": uri, "schema": schema or {}, "rows": rows, "bytes": size}


def table_dataset(
    name: str, location: str | None, schema: dict[str, str] | None = None, rows: int | None = None
) -> dict[str, Any]:
    """A descriptor of a catalog table (``database.table``) with its storage location if known."""
    return {"table": name, "location": location, "schema": schema or {}, "rows": rows, "bytes": None}


def namespace_and_name(uri: str) -> tuple[str, str]:
    """OpenLineage's naming: ``file`` + absolute path, ``s3://bucket`` + key, ``hdfs://host:port`` + path."""
    if uri.startswith("file:") or "://" not in uri:
        path = uri[len("file:") :] if uri.startswith("file:") else uri
        return "file", "/" + path.lstrip("/")
    if uri.startswith(("s3://", "s3a://")):
        parsed = parse_uri(uri.replace("s3a://", "s3://", 1))
        return f"s3://{parsed.bucket}", parsed.path.lstrip("/")
    scheme, rest = uri.split("://", 1)
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority}", "/" + path


def _dataset(descriptor: dict[str, Any], output: bool) -> Any:
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset, schema_dataset, symlinks_dataset

    facets: dict[str, Any] = {}
    if descriptor.get("schema"):
        fields = [schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in descriptor["schema"].items()]
        facets["schema"] = schema_dataset.SchemaDatasetFacet(fields=fields)
    table = descriptor.get("table")
    if table:
        location = descriptor.get("location")
        namespace, name = namespace_and_name(location) if location else ("spark_catalog", table)
        facets["symlinks"] = symlinks_dataset.SymlinksDatasetFacet(
            identifiers=[symlinks_dataset.Identifier(namespace="spark_catalog", name=table, type="TABLE")]
        )
    else:
        namespace, name = namespace_and_name(str(descriptor["uri"]))
    if not output:
        return InputDataset(namespace=namespace, name=name, facets=facets)
    statistics: dict[str, Any] = {}
    if descriptor.get("rows") is not None:
        statistics["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=int(descriptor["rows"]), size=descriptor.get("bytes")
        )
    return OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=statistics)


@dataclass
class LineageRecorder:
    """What one task instance read and wrote (plain data until OpenLineage asks)."""

    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def operator_lineage(self) -> Any:
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage(
            inputs=[_dataset(d, output=False) for d in self.inputs],
            outputs=[_dataset(d, output=True) for d in self.outputs],
        )


def shardset_dataset(ref: Any) -> dict[str, Any]:
    """A ShardSet (its dataset folder) with its schema, rows and bytes."""
    return store_dataset(str(ref.dataset_uri), dict(ref.schema or {}), int(ref.num_rows), int(ref.total_bytes))


def model_dataset(ref: Any) -> dict[str, Any]:
    """A ModelRef by the folder its weights live in (the file name is content-addressed, the folder is not)."""
    return store_dataset(str(ref.weights_uri).rsplit("/", 1)[0], {"weights": "torch state dict"})


def sql_tables(sql: str) -> list[str]:
    """The tables a query reads (OpenLineage's SQL parser), ``database.table`` where qualified."""
    try:
        from openlineage_sql import parse
    except ImportError:  # pragma: no cover - the provider's dependency
        return []
    try:
        meta = parse([sql])
    except Exception:
        return []
    if meta is None:
        return []
    names = {".".join(p for p in (t.database, getattr(t, "schema", None), t.name) if p) for t in meta.in_tables}
    return sorted(names)
