"""Search over plans (and, later, subnets): an Optuna study in the project, trials fanned out
to local processes or Ray, cheap fidelity first and full runs for the promising ones."""
