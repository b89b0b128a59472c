"""On-policy preference pairs: the student answers k times, checkers (or the judge) pick chosen and rejected."""
