"""A small FHIR R4 client on the standard library: POST a transaction, confirm it.

TLS verification is on unless the config says otherwise (then a warning is
logged each run); every request has a timeout. HTTP results map to the
outbox's retry classes: network errors, timeouts, 408, 429 and 5xx are
transient; other 4xx and error OperationOutcomes are permanent. A 2xx whose
body is not a complete ``transaction-response`` is not a confirmation, so the
entry stays pending.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
from typing import Optional, Tuple
from urllib.parse import urlsplit

from edge_app import __version__
from edge_app.config import ConfigError
from edge_app.sync.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_TRANSIENT_STATUS = {408, 425, 429}


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"FHIR base URL {url!r} is not an http(s) URL (example: https://fhir.example.org/R4)")
    if parts.query or parts.fragment:
        raise ConfigError(f"FHIR base URL {url!r} must not have a query or fragment")
    return url.rstrip("/")


def outcome_text(body: object) -> Optional[str]:
    """The messages of an OperationOutcome, joined; None if the body is not one."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None
    msgs = []
    for issue in body.get("issue") or []:
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
        if text:
            msgs.append(f"{issue.get('severity', 'error')}: {text}")
    return "; ".join(msgs) or "OperationOutcome without details"


class FhirClient:
    def __init__(self, base_url: str, *, token: Optional[str] = None, verify_tls: bool = True,
                 timeout_s: float = 10.0):
        self.base_url = check_url(base_url)
        self.token = token
        self.timeout_s = timeout_s
        self.host = urlsplit(self.base_url).hostname
        self._ssl = ssl.create_default_context()
        if not verify_tls:
            logger.warning("TLS certificate verification is OFF for %s (fhir.verify_tls=false): test setups only",
                           self.host)
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE
        if urlsplit(self.base_url).scheme == "http" and self.host not in ("localhost", "127.0.0.1", "::1"):
            logger.warning("FHIR server %s is plain http: results travel unencrypted", self.host)

    def request(self, method: str, path: str = "", body: Optional[dict] = None) -> Tuple[int, object]:
        """(status, parsed JSON body or None) for a 2xx; raises a DeliveryError otherwise."""
        url = self.base_url + ("/" + path.lstrip("/") if path else "")
        data = json.dumps(body, separators=(",", ":")).encode("utf-8") if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", FHIR_JSON)
        req.add_header("User-Agent", f"wbc-counter/{__version__}")
        if data is not None:
            req.add_header("Content-Type", f"{FHIR_JSON}; charset=utf-8")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        where = f"FHIR server {self.host}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, where) from None
        except (socket.timeout, TimeoutError):
            raise TransientError(f"{where} did not answer within {self.timeout_s:g} s", receiver_down=True) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise TransientError(f"{where}: TLS certificate not trusted ({reason.verify_message}); fix the "
                                     "server certificate or the system CA store", receiver_down=True) from None
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise TransientError(f"{where} did not answer within {self.timeout_s:g} s",
                                     receiver_down=True) from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise TransientError(f"cannot reach {where}: {text} (check the network and fhir.url)",
                                 receiver_down=True) from None
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            # Connection reset or closed mid-response: the server may or may not have stored it.
            raise TransientError(f"connection to {where} broke: {exc.__class__.__name__}",
                                 receiver_down=True) from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed

    def _http_error(self, exc: urllib.error.HTTPError, where: str):
        try:
            body = json.loads(exc.read() or b"null")
        except (ValueError, OSError):
            body = None
        detail = outcome_text(body) or (exc.reason if isinstance(exc.reason, str) else "")
        msg = f"{where} answered HTTP {exc.code}" + (f": {detail[:300]}" if detail else "")
        if exc.code in _TRANSIENT_STATUS or exc.code >= 500:
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            return TransientError(msg, retry_after_s=retry_after, receiver_down=exc.code in (429, 503))
        if exc.code in (401, 403):
            return PermanentError(msg + " (check the token file and its permissions on the server)")
        return PermanentError(msg)

    def transaction(self, bundle: dict) -> dict:
        """POST a transaction Bundle; returns the transaction-response once every entry succeeded."""
        _, body = self.request("POST", "", bundle)
        problem = outcome_text(body)
        if problem and any(i.get("severity") in ("error", "fatal") for i in body.get("issue") or []):
            raise PermanentError(f"FHIR server {self.host} rejected the bundle: {problem[:300]}")
        if not isinstance(body, dict) or body.get("type") != "transaction-response":
            raise TransientError(f"FHIR server {self.host} did not confirm the transaction "
                                 "(no transaction-response); will send again")
        got = body.get("entry") or []
        if len(got) != len(bundle.get("entry") or []):
            raise TransientError(f"FHIR server {self.host} confirmed {len(got)} of "
                                 f"{len(bundle.get('entry') or [])} entries; will send again")
        for e in got:
            status = str((e.get("response") or {}).get("status", ""))
            if not status[:1] == "2":
                raise PermanentError(f"FHIR server {self.host} answered {status or 'no status'} for an entry: "
                                     f"{outcome_text((e.get('response') or {}).get('outcome')) or ''}"[:400])
        return body


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the back-off alone is fine
