"""bitsandbytes is imported without letting it fetch code from the Hugging Face hub.

With `kernels` installed (transformers >= 5.25 requires it), bitsandbytes' import on an AVX512-BF16 CPU
asks the hub for a compiled 4-bit kernel (`kernels-community/quantization-bitsandbytes`): a network
call and a download of executable code, hidden in `import peft` (which transformers' Trainer imports).
bezoar never downloads behind a user's back, so that one import runs with the hub switched off: a
kernel already in the user's kernel cache is still used, otherwise bitsandbytes keeps its own CPU path.

The import happens deep inside transformers, peft and trl, so the rule is an import hook (installed
when bezoar is imported, costing nothing until bitsandbytes is imported), not a call at each site.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Iterator

MODULE = "bitsandbytes"


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """`kernels` reads huggingface_hub's flag when bitsandbytes calls it; offline it also warns that it
    cannot check the kernel's publisher, which is moot when nothing is fetched."""
    from huggingface_hub import constants

    kernels_log = logging.getLogger("kernels")
    saved_offline, saved_level = constants.HF_HUB_OFFLINE, kernels_log.level
    constants.HF_HUB_OFFLINE = True
    kernels_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_offline
        kernels_log.setLevel(saved_level)


class _OfflineImport(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes the normal way, then has its module code run inside `_hub_offline()`.
    (`importlib.util.find_spec("bitsandbytes")`, a mere availability check, passes through here too,
    so the hook stays installed rather than removing itself after one lookup.)"""

    _looking = False

    def find_spec(self, name, path=None, target=None):
        if name != MODULE or self._looking:
            return None
        self._looking = True  # so the normal finders answer the lookup below
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_offline(module) -> None:
            with _hub_offline():
                run_module(module)

        spec.loader.exec_module = exec_offline  # this spec's own loader instance
        return spec


def keep_bitsandbytes_offline() -> None:
    """Install the hook, unless bitsandbytes is already imported or the hook is already there."""
    if MODULE in sys.modules or any(isinstance(finder, _OfflineImport) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _OfflineImport())
