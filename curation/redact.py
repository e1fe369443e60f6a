"""Secrets out of everything the project writes or prints: locations, messages, settings, logs.

Redaction is for what is written (config.json, manifests, stats, the report, logs, error messages),
never for what is fetched: callers open the real URL and pass it through here only where they
write it or raise with it.

What is replaced by `***`:
- URL user-info, user name included (`https://user:password@host/…`, `https://TOKEN@host/…`,
  `s3://KEY:SECRET@bucket/…` → `scheme://***@host/…`), wherever a URL appears in a text.
- The value of a query or fragment parameter (`?name=value`, `&name=value`, `#name=value`)
  whose name is a secret name (below): presigned S3 (`X-Amz-Signature`, `X-Amz-Credential`,
  `X-Amz-Security-Token`; SigV2 `Signature`, `AWSAccessKeyId`), GCS signed URLs (`X-Goog-Signature`,
  `X-Goog-Credential`), Azure SAS (`sig`), OAuth and API keys (`token`, `access_token`,
  `refresh_token`, `id_token`, `api_key`, `apikey`, `key`, `auth`), and `password`, `pass`,
  `secret`, `client_secret`. Also without a scheme in front (`/path?token=…` in an HTTP library's
  message). Other parameters (`X-Amz-Expires`, `X-Amz-Date`, …) and paths are kept:
  `s3://bucket/key` is unchanged.
- In settings (`redact_config`): the value of every key with a secret name, at any depth.

A secret name is a whole name that says it holds a secret: its last word (split at `_`, `-`, `.`
and camelCase, ignoring case) is one of SECRET_WORDS, or it is one of SECRET_NAMES:
`X-Amz-Security-Token`, `sessionToken`, `aws_secret_access_key`, `AWSAccessKeyId` and
`input.api_key` all are; `tokens`, `keep`, `monkey`, `signature_seconds` and `X-Amz-SignedHeaders`
are not (a word inside another name says nothing: a timing named after signatures is a number).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback

REDACTED = "***"
SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "pass", "secret", "token", "key", "apikey", "credential", "credentials",
    "signature", "sig", "auth", "authorization",
})
# Secret names whose last word is not one of SECRET_WORDS (S3's SigV2 and GCS's V2 signed URLs).
SECRET_NAMES = frozenset({"awsaccesskeyid", "googleaccessid"})
# Spark hides the values of confs whose name or value matches this in its UI, event log and
# logged environment; Spark's default (`secret|password|token|access[.]?key`) plus the words above.
SPARK_REDACTION_REGEX = r"(?i)secret|password|passwd|token|credential|signature|access[._-]?key|api[._-]?key"

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# scheme://user-info@ — up to the last `@` before the path: a password may hold an `@`.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
# ?name=value, &name=value, ;name=value, #name=value: the value ends at the next separator, quote or
# whitespace, less the punctuation that ends a sentence around it ("… for url: URL?token=abc. Retrying").
_PARAMETER = re.compile(r"([?&;#])([^=&;#?\s\"'<>]+)=([^&;#\s\"'<>]*?)(?=[.,:;)\]]*(?:[&;#\s\"'<>]|$))")


def is_secret_name(name: str) -> bool:
    """Whether a setting or parameter named `name` holds a secret (see the module's docstring)."""
    words = _WORDS.findall(name)
    return bool(words) and (words[-1].lower() in SECRET_WORDS or "".join(words).lower() in SECRET_NAMES)


def _parameter(match: re.Match) -> str:
    separator, name, value = match.groups()
    return f"{separator}{name}={REDACTED}" if value and is_secret_name(name) else match[0]


def redact_text(text: str) -> str:
    """`text` (a URL, a path, or any message holding URLs) with its secrets replaced by `***`."""
    if "@" in text:
        text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    if "=" in text:
        text = _PARAMETER.sub(_parameter, text)
    return text


def redact_config(value):
    """A copy of settings (dicts, lists, strings, numbers…) with secret-named values replaced
    by `***` and every string passed through `redact_text`; None stays None."""
    if isinstance(value, dict):
        return {key: REDACTED if item is not None and is_secret_name(str(key)) else redact_config(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_config(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter(logging.Filter):
    """Redacts a log record's message and its exception text before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed call: keep its parts, redacted
            message = f"{record.msg} (arguments: {record.args!r})"
        record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def print_redacted_exception(kind, error, trace) -> None:
    """A `sys.excepthook`: the traceback of an uncaught exception, redacted, on stderr."""
    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, error, trace))))


def install_redaction() -> None:
    """Redacts what this process logs and the traceback it prints when it dies: a RedactingFilter
    on every handler of the root logger and on the one Python uses when none is configured
    (`logging.lastResort`), and `print_redacted_exception` as `sys.excepthook`. Idempotent; the
    jobs call it in the driver and in the tasks that open inputs."""
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    sys.excepthook = print_redacted_exception
