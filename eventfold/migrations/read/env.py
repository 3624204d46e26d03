"""Alembic environment of this migration set: the shared one."""

from eventfold.migrations.environment import run

run()
