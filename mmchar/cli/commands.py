"""Every command, registered on `mmchar.cli.app` by importing the module of its group: the import order is the
order `mmchar --help` lists them in. Each command is thin: parse flags, call the library, print through
`mmchar.cli.output` (docs/cli.md says which file holds which command)."""

from __future__ import annotations

from mmchar.cli import advise, info, measure, sweep, runs, views

GROUPS = (info, measure, sweep, runs, views, advise)  # in the order of `mmchar --help`
