"""Both code locations as one, for the dg CLI, which serves a project as a single location.

`dg check defs`, `dg list defs`, `dg dev` and `dg launch` load this module, so they check the
pipeline's settings and the alert settings in one go. Deployments use workspace.yaml instead,
where the alerts are a location of their own and keep running when the pipeline cannot load.
"""

from dagster import Definitions

from itresume_pipeline import alerting, definitions

defs = Definitions.merge(definitions.defs, alerting.defs)
