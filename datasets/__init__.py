"""Built-in data sets and partitioners (installed as ``fedbench.datasets``)."""
