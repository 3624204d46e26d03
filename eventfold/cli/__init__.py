"""The composition root: the `eventfold` command, which loads an `App` and serves it.

Everything that knows all the services at once lives here (and in
`eventfold.migrate`, which knows every service's tables); the services and the
shared plumbing below them never import it.
"""

from eventfold.cli.main import app

__all__ = ["app"]
