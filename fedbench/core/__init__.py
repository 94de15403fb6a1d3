"""The method contract and what a run is made of: the Method base class, the run context, setup, checkpoints."""
