"""Zoo settings: environment variables, the cache location, the mirror to fetch from, the retry policy.

``KERAS_RELAXEQ_CACHE`` (cache root), ``KERAS_RELAXEQ_ZOO_URL`` (mirror), ``KERAS_RELAXEQ_OFFLINE``
(no network), ``KERAS_RELAXEQ_MAX_TRIES`` / ``KERAS_RELAXEQ_RETRY_DELAY`` / ``KERAS_RELAXEQ_TIMEOUT``
(retries of transient network errors); arguments override them, bad values are
:class:`~keras_relaxeq.zoo.errors.InvalidSettingError`.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from keras_relaxeq.zoo.errors import InvalidSettingError
from keras_relaxeq.zoo.registry import Catalogue, ZooEntry, load_index

ENV_CACHE = "KERAS_RELAXEQ_CACHE"
ENV_URL = "KERAS_RELAXEQ_ZOO_URL"
ENV_OFFLINE = "KERAS_RELAXEQ_OFFLINE"
ENV_MAX_TRIES = "KERAS_RELAXEQ_MAX_TRIES"
ENV_RETRY_DELAY = "KERAS_RELAXEQ_RETRY_DELAY"
ENV_TIMEOUT = "KERAS_RELAXEQ_TIMEOUT"
DEFAULT_CACHE = "~/.keras/keras_relaxeq"

DEFAULT_MAX_TRIES = 5
DEFAULT_BASE_DELAY = 1.0
MAX_DELAY = 30.0
DEFAULT_TIMEOUT = 60.0


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``$KERAS_RELAXEQ_OFFLINE`` (1/true/yes/on or 0/false/no/off)."""
    if offline is not None:
        return bool(offline)
    raw = os.environ.get(ENV_OFFLINE, "")
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise InvalidSettingError(f"${ENV_OFFLINE}={raw!r} is not understood: set it to 1 (offline) "
                                  "or 0 (network allowed), or unset it.")
    return value in _TRUE


def _number_setting(value, env_var: str, arg: str, default, *, integer: bool, minimum: float,
                    strict: bool, what: str):
    """``value`` (an argument), else ``$env_var``, else ``default``, checked to be a finite
    number ``>= minimum`` (``> minimum`` if ``strict``); :class:`InvalidSettingError` otherwise."""
    if value is not None:
        source, raw = f"{arg}=", value
    else:
        raw = os.environ.get(env_var, "")
        if not raw.strip():
            return default
        source = f"${env_var}="
    try:
        if isinstance(raw, bool):
            raise ValueError
        if integer:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            number = int(raw.strip() if isinstance(raw, str) else raw)
        else:
            number = float(raw.strip() if isinstance(raw, str) else raw)
        if not math.isfinite(number) or number < minimum or (strict and number == minimum):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        bound = f"{'>' if strict else '>='} {minimum:g}"
        kind = "an integer" if integer else "a number"
        raise InvalidSettingError(f"{source}{raw!r} is invalid: {what} must be {kind} {bound} "
                                  f"(default {default:g}).") from None
    return number


def cache_root(cache_dir=None) -> Path:
    """``cache_dir``, else ``$KERAS_RELAXEQ_CACHE``, else ``~/.keras/keras_relaxeq``."""
    raw = cache_dir if cache_dir is not None else os.environ.get(ENV_CACHE) or DEFAULT_CACHE
    return Path(raw).expanduser()


def entry_cache_dir(entry: ZooEntry, cache_dir=None) -> Path:
    return cache_root(cache_dir) / "zoo" / entry.name / str(entry.version)


def resolve_base_url(base_url=None, catalogue: Catalogue | None = None) -> str:
    if base_url:
        return str(base_url)
    env = os.environ.get(ENV_URL)
    if env:
        return env
    if catalogue is not None and catalogue.base_url:
        return catalogue.base_url
    if catalogue is None:
        catalogue = load_index()
    return str(catalogue.root)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: delay ``base_delay * 2**k`` (+ up to 10% jitter), capped."""

    max_tries: int = DEFAULT_MAX_TRIES
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = MAX_DELAY
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def resolve(cls, max_tries=None, base_delay=None, timeout=None) -> "RetryPolicy":
        mt = _number_setting(max_tries, ENV_MAX_TRIES, "max_tries", DEFAULT_MAX_TRIES,
                             integer=True, minimum=1, strict=False, what="the number of tries")
        bd = _number_setting(base_delay, ENV_RETRY_DELAY, "base_delay", DEFAULT_BASE_DELAY,
                             integer=False, minimum=0, strict=False,
                             what="the first retry delay (seconds)")
        to = _number_setting(timeout, ENV_TIMEOUT, "timeout", DEFAULT_TIMEOUT, integer=False,
                             minimum=0, strict=True, what="the socket timeout (seconds)")
        return cls(max_tries=mt, base_delay=bd, timeout=to)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        d = self.base_delay * (2 ** (attempt - 1))
        d += random.uniform(0, 0.1 * d)
        if retry_after is not None:
            d = max(d, retry_after)
        return min(d, self.max_delay)
