"""The exit codes of jotc-migrate and the error that carries one."""

from __future__ import annotations

EXIT_OK = 0
# check: the database is older, unknown or incompatible with this build; upgrade and downgrade:
# the move would strand the serving release (serving.py), or the database is newer than this
# build and incompatible with it.
EXIT_NOT_AT_HEAD = 1
EXIT_UNAVAILABLE = 2  # the database could not be reached in time, or the configuration is wrong
EXIT_LOCK_NOT_ACQUIRED = 3  # the migration lock, or a table lock after every retry
EXIT_STATEMENT_TIMEOUT = 4  # a statement ran past statement_timeout; rolled back
EXIT_MIGRATION_FAILED = 5  # any other database error in a migration; rolled back
# 130 / 143: stopped by SIGINT / SIGTERM; the running statement was cancelled and rolled back.


class MigrateError(Exception):
    """A failure that ends the command with a one-line message and an exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
