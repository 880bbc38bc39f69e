"""Prefect orchestration of the mtbert pipeline (tasks call `mtbert.stages`; no logic here)."""
