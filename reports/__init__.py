"""Tables and figures from tracked runs (installed as ``fedbench.reports``)."""
