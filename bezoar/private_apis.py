"""The private TRL and transformers APIs bezoar leans on, and the versions they were checked with.

bezoar subclasses TRL's trainers at private seams (`DPOTrainer._prepare_dataset`,
`_precompute_ref_logps`, `_set_signature_columns_if_needed`, `trl.kernels.ChunkedLogProbFunction`,
`trl.trainer.utils.FusedCausalLMOutput`) and the local decoder builds transformers' caches by hand
(`DynamicCache(ddp_cache_data=...)`, `cache.layers`, the `cache=` keyword). Such names change
without notice, so each use first calls `require`: outside the range the tests ran with it fails
with one line naming the package and the range, instead of a confusing error deep in a training step.
The ranges match pyproject.toml's floors (the versions the test suite ran with).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import metadata

from packaging.version import Version

from bezoar.errors import BezoarError

SUPPORTED: dict[str, tuple[str, str]] = {
    # TRL moves its private trainer internals between minor releases: one minor series at a time.
    "trl": ("1.16.0", "1.17"),
    "transformers": ("5.24.0", "6"),
}


class UnsupportedVersion(BezoarError):
    """An installed package is outside the range whose private API bezoar was tested with."""


@lru_cache(maxsize=None)
def require(package: str, purpose: str) -> None:
    """Raise UnsupportedVersion unless `package` is within SUPPORTED[package] (inclusive, exclusive)."""

    low, high = SUPPORTED[package]
    try:
        installed = metadata.version(package)
    except metadata.PackageNotFoundError:
        installed = None
    if installed is None or not Version(low) <= Version(installed) < Version(high):
        raise UnsupportedVersion(f"{purpose} uses private {package} APIs tested with {package}>={low},<{high}, "
                                 f"but {package} {installed or 'is not installed'} is installed: "
                                 f"pip install '{package}>={low},<{high}'")
