"""Synthetic instruction data: LaMini-LM, Evol-Instruct and Orca generation."""
