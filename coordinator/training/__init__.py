"""Federated training rounds: choose sites, send signed train commands, vet and aggregate
the results into model versions (``driver`` runs a whole run, ``round`` one round)."""
