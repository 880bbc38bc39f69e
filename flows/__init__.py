"""Prefect orchestration of the mtbert pipeline (tasks call `mtbert.pipeline.stages`; no logic here)."""
