"""Connection settings with the nomad CLI's environment variables and precedence.

Flags override environment variables, which override defaults, as in the nomad CLI.
As in the Go API client, an environment variable set to the empty string counts as unset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_ADDRESS = "http://127.0.0.1:4646"

# Field name -> environment variable, for every string setting.
_ENV = {
    "address": "NOMAD_ADDR",
    "region": "NOMAD_REGION",
    "namespace": "NOMAD_NAMESPACE",
    "token": "NOMAD_TOKEN",
    "ca_cert": "NOMAD_CACERT",
    "ca_path": "NOMAD_CAPATH",
    "client_cert": "NOMAD_CLIENT_CERT",
    "client_key": "NOMAD_CLIENT_KEY",
    "tls_server_name": "NOMAD_TLS_SERVER_NAME",
    "http_auth": "NOMAD_HTTP_AUTH",
}

ENV_NAMES = frozenset({*_ENV.values(), "NOMAD_SKIP_VERIFY"})
"""Every environment variable a Nomad connection is configured by."""

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool: the accepted spellings, or None when the text is invalid."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


@dataclass(frozen=True, repr=False)
class NomadConfig:
    """Where and how to reach Nomad. Empty strings mean "not set"."""

    address: str = DEFAULT_ADDRESS
    token: str = ""
    region: str = ""
    namespace: str = ""
    ca_cert: str = ""
    ca_path: str = ""
    client_cert: str = ""
    client_key: str = ""
    tls_server_name: str = ""
    tls_skip_verify: bool = False
    http_auth: str = ""  # "user[:password]" for HTTP basic auth

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NomadConfig:
        """The defaults overridden by the NOMAD_* variables that are set and non-empty."""
        values: dict[str, Any] = {
            field: environ[var] for field, var in _ENV.items() if environ.get(var)
        }
        skip = parse_go_bool(environ.get("NOMAD_SKIP_VERIFY", ""))
        if skip is not None:  # an invalid value is ignored, as in the Go client
            values["tls_skip_verify"] = skip
        return cls(**values)

    def with_overrides(self, **flags: Any) -> NomadConfig:
        """A copy with the given settings replaced; None means "flag not given"."""
        return dataclasses.replace(self, **{k: v for k, v in flags.items() if v is not None})

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) from `http_auth`, split on the first colon, or None."""
        if not self.http_auth:
            return None
        user, _, password = self.http_auth.partition(":")
        return user, password

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "token" and value:
                value = "<redacted>"
            elif field.name == "http_auth" and value:
                user, sep, _ = value.partition(":")
                value = f"{user}:<redacted>" if sep else user
            shown.append(f"{field.name}={value!r}")
        return f"NomadConfig({', '.join(shown)})"
