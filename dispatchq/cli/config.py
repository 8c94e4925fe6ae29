"""`dispatchq config`: the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from dispatchq.cli.status import json_flag
from dispatchq.config.logging import MASK
from dispatchq.config.settings import load_settings, mask_url
from dispatchq.nomad.config import NomadConfig


def register(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print the effective settings (secrets masked)",
        description="Print the settings from DISPATCHQ_*, the config file and NOMAD_*.",
    )
    json_flag(config)
    config.set_defaults(handler=run_config)


def _masked_nomad(nomad: NomadConfig) -> dict[str, Any]:
    data = dataclasses.asdict(nomad)
    data["address"] = mask_url(data["address"])
    if data["token"]:
        data["token"] = MASK
    if data["http_auth"]:
        user, sep, _ = data["http_auth"].partition(":")
        data["http_auth"] = f"{user}:{MASK}" if sep else user
    return data


def run_config(args: argparse.Namespace) -> int:
    settings = load_settings()
    nomad = NomadConfig.from_env()
    data = {"dispatchq": settings.masked(), "nomad": _masked_nomad(nomad)}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for section, values in data.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value, default=str)}")
        print()
    return 0
