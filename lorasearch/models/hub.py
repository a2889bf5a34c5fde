"""Whether the Hugging Face hub can be asked at all, decided in a moment.

Without a network, ``from_pretrained("owner/name")`` retries for about a minute and prints a
warning per retry before it fails. `use_local_files_only` answers at once instead: yes when
``HF_HUB_OFFLINE`` is set, or when a connection to the hub's host cannot be opened within a couple
of seconds (no proxy configured); the loaders then read the local cache only and fail in one line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

PROBE_SECONDS = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
TRUE = ("1", "on", "yes", "true")


def offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``), never a hub id."""
    return name.startswith(("/", ".", "~")) or len(Path(name).parts) > 2 or "\\" in name


def endpoint() -> str:
    """The hub's URL (``HF_ENDPOINT`` when set)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def hub_reachable(url: str | None = None, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub's host opens within ``timeout`` seconds (asked once per process).

    Behind a proxy the answer is always yes: the proxy, not this machine, reaches the hub.
    """
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    parsed = urlparse(url or endpoint())
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    if not host:
        return True
    answer: list[bool] = []

    def probe() -> None:  # in a thread: a name lookup ignores the socket timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def use_local_files_only() -> bool:
    """Read only the local cache: offline was asked for, or the hub is unreachable."""
    return offline_requested() or not hub_reachable()


@contextlib.contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """``huggingface_hub``'s offline mode for the block: every request is refused at once, no retries.

    (``local_files_only=True`` alone does not reach every lookup transformers makes, e.g. the one
    for an adapter config.)
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def offline_problem(what: str = "not a local file or folder") -> str:
    """What went wrong, and the fix, for a hub name found neither here nor in the local cache."""
    if offline_requested():
        return (f"{what}, and HF_HUB_OFFLINE is set with no copy in the local cache; "
                "fix: check the name, pass a local path, or unset HF_HUB_OFFLINE to download it")
    return (f"{what}, the Hugging Face hub ({endpoint()}) is unreachable from here, and the local "
            "cache has no copy; fix: check the name or pass a local path (download it where there is a network; "
            "HF_HUB_OFFLINE=1 skips the hub check)")
