"""Log output for the CLI and for the processes it starts (a stage's child logs the same way)."""
from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler

NOISY = ("httpx", "httpcore", "urllib3", "filelock", "datasets", "transformers", "accelerate", "lm_eval")


def configure_logging(level: int = logging.INFO) -> None:
    """Rich log lines on stderr at `level`; third-party chatter only from WARNING up."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    logging.basicConfig(level=level, format="%(message)s", force=True,
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns on every import on a CPU without its optional 4-bit kernels: QLoRA on CPU is
    # not a bezoar path (MACHINE-NOTES), so the warning is noise above a user's one-line error.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
