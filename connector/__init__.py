"""The in-pod connector: the paper's mirror job that drives one HPC job through its life."""
