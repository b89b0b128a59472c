"""bezoar: the OpenBezoar recipe as a toolkit."""
__version__ = "0.1.0"
