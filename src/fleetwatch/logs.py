"""Logging for the commands: one format, and secrets never written, whoever logs them.

Client libraries log their whole configuration at DEBUG (kafka-python's admin client prints
``sasl_plain_password``). Rather than trusting every library, every log record is scrubbed when
it is made: the secrets known to fleetwatch, in every form a record could spell them (as they
are, as ``repr`` and as JSON escape them), become ``********`` in the message and in the
traceback text, at every level and through every handler (Faust installs its own).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any

MASK = "********"
_secrets: list[str] = []


def _forms(secret: str) -> set[str]:
    return {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}


def redact(text: str) -> str:
    """``text`` with every known secret masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def register_secrets(secrets: Iterable[str]) -> None:
    """From now on, mask these in every log record (longest first, so a secret that contains
    another is masked whole)."""
    found = {form for secret in secrets if secret for form in _forms(secret)}
    _secrets[:] = sorted(found | set(_secrets), key=len, reverse=True)


_make_record = logging.getLogRecordFactory()


def _scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _make_record(*args, **kwargs)
    if _secrets:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
    return record


logging.setLogRecordFactory(_scrubbed_record)


#: Environment variables of the object-store clients whose values must never be printed.
_STORE_CREDENTIALS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                      "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")  # fmt: skip


def configure(level: str, secrets: Iterable[str] = ()) -> None:
    """Log to stderr at ``level``; the clients' connection chatter only at DEBUG."""
    register_secrets(secrets)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # kafka-python narrates every connection attempt; our errors say what matters in one line.
    quiet = logging.DEBUG if level == "DEBUG" else logging.CRITICAL
    for noisy in ("kafka", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(quiet)
    # The object-store clients log requests (signed headers among them) at DEBUG and where
    # they found the credentials at INFO; their failures reach us as exceptions.
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # APScheduler narrates every job start and end (every 2 s with `schedule --live`); the
    # jobs log what they did themselves.
    if level != "DEBUG":
        logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    register_secrets(
        os.environ[name] for name in _STORE_CREDENTIALS if len(os.environ.get(name, "")) >= 4
    )
