"""`dispatchq config`: the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import click

from dispatchq.cli.options import json_flag
from dispatchq.config.logging import MASK
from dispatchq.config.settings import load_settings, mask_url
from dispatchq.nomad.config import NomadConfig


@click.command("config", short_help="print the effective settings (secrets masked)")
@json_flag
def command(**options: Any) -> int:
    """Print the settings from DISPATCHQ_*, the config file and NOMAD_*."""
    return run_config(argparse.Namespace(**options))


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
