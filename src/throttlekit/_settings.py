"""The settings a ``Limiter`` is built with, checked before any is used: a ConfigError
names the first bad one."""

from __future__ import annotations

from collections.abc import Callable

from ._algorithms import check_strategy, make_algorithm
from ._errors import ConfigError
from ._rates import Rate
from ._resilience import ON_STORAGE_ERROR
from ._responses import check_header_style
from .storage import Storage, storage_from_url

__all__ = ["check_settings", "storage_of"]


def storage_of(storage: object) -> Storage:
    """The store a ``storage`` argument names: a URL's, or the Storage object given."""
    if isinstance(storage, str):
        return storage_from_url(storage)
    if not isinstance(storage, Storage):
        raise ConfigError(f"storage must be a URL or a Storage object, got {storage!r}")
    return storage


def check_settings(
    storage: Storage, *, clock: Callable[[], float] | None, on_storage_error: str,
    retry_interval: float, error_log_interval: float, strategy: str, burst: int | None,
    denial_cache_size: int, header_style: str, headers_on_allowed: bool,
) -> None:
    """ConfigError for the first setting that is not what ``Limiter`` documents."""
    if clock is not None and not callable(clock):
        raise ConfigError(f"clock must be a zero-argument callable, got {clock!r}")
    if on_storage_error not in ON_STORAGE_ERROR:
        raise ConfigError(
            f"on_storage_error must be one of {', '.join(ON_STORAGE_ERROR)}, "
            f"got {on_storage_error!r}"
        )
    for name, value in (("retry_interval", retry_interval),
                        ("error_log_interval", error_log_interval)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < float("inf")  # also refuses nan
        ):
            raise ConfigError(f"{name} must be a finite non-negative number, got {value!r}")
    check_strategy(strategy, storage)
    if burst is not None:
        make_algorithm("token_bucket", Rate(1, 1.0), burst)  # validates
    if isinstance(denial_cache_size, bool) or not isinstance(denial_cache_size, int) or (
        denial_cache_size < 0
    ):
        raise ConfigError(
            f"denial_cache_size must be an integer >= 0, got {denial_cache_size!r}"
        )
    check_header_style(header_style)
    if not isinstance(headers_on_allowed, bool):
        raise ConfigError(
            f"headers_on_allowed must be True or False, got {headers_on_allowed!r}"
        )
