"""Evaluation: MT-Bench, LM Evaluation Harness, preference accuracy, comparison."""
