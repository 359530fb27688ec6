"""Both code locations as one, for the dg CLI, which serves a project as a single location;
deployments use workspace.yaml, where the alerts stay up when the pipeline cannot load."""

from dagster import Definitions

from itresume_pipeline import alerting, definitions

defs = Definitions.merge(definitions.defs, alerting.defs)
