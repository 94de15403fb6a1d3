"""Built-in federated learning methods (installed as ``fedbench.methods``), one module each."""
