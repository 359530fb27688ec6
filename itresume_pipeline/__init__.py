"""IT Resume attempt statistics -> PostgreSQL -> daily metrics -> Google Sheets, on Dagster."""

from itresume_pipeline.definitions import defs

__all__ = ["defs"]
