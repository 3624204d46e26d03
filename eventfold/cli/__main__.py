"""`python -m eventfold.cli`: the same command as `eventfold`."""

from eventfold.cli.main import app

app()
