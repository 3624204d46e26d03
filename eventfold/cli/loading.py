"""Loading the `App` a deployment serves, from `EVENTFOLD_APP=package.module:attribute`.

The way uvicorn loads an ASGI app: the module is imported (the current
directory and `PYTHONPATH` are searched) and the attribute read; it must be an
`App`.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache

from eventfold.app import App


class AppLoadError(LookupError):
    """`EVENTFOLD_APP` names nothing that can be served; the message says why."""


@cache
def load_app(spec: str) -> App:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise AppLoadError(f"EVENTFOLD_APP must look like package.module:attribute, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # the module exists but an import inside it failed: that error is the user's to see
        raise AppLoadError(
            f"cannot import {module_name!r} (EVENTFOLD_APP={spec}): no such module on the path;"
            " run from its folder or add that folder to PYTHONPATH"
        ) from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise AppLoadError(
            f"module {module_name!r} has no attribute {attribute!r} (EVENTFOLD_APP={spec})"
        ) from None
    if not isinstance(found, App):
        raise AppLoadError(f"{spec} is a {type(found).__name__}, not an eventfold App")
    return found
