"""Quality filtering: heuristics, de-duplication, contamination, and an LLM judge."""
