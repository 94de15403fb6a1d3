"""Pieces several methods share: width sub-models (HeteroFL, FedRolex, AllSmall), nHSIC (NeuLite, the information plane)."""
