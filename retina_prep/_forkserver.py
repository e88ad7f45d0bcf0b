"""Imported by the worker fork server at start: it exits when the main process dies."""

from ._workers import _forkserver_init

_forkserver_init()
