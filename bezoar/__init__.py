"""bezoar: the OpenBezoar recipe as a toolkit."""
from bezoar.hub_kernels import keep_bitsandbytes_offline

__version__ = "0.1.0"

keep_bitsandbytes_offline()  # bezoar never lets a library download code behind the user's back
