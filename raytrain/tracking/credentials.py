"""Signing in to an MLflow server that requires it (``mlflow server --app-name basic-auth``).

Credentials come from where every MLflow client reads them: ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``, else the file ``~/.mlflow/credentials`` (mode 600), and never from
the experiment file. Ray processes that log or load models for a run (Ray Train's controller and
rank-0 worker, Serve replicas) get the driver's credentials inside their arguments, as a
``Credentials`` object: not as runtime-env variables, which Ray shows in job and actor details
and in the dashboard, and never printed (its repr hides the password).
"""

from __future__ import annotations

import os
from pathlib import Path

from raytrain.errors import TrackingError

__all__ = ["CREDENTIALS_FILE", "Credentials", "current", "sign_in_help"]

USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# Where MLflow's clients read a user name and password when the environment has none
# (mlflow.utils.credentials): an ini file, section [mlflow], keys mlflow_tracking_username and
# mlflow_tracking_password. The cluster configs write one on every node (start_mlflow.sh).
CREDENTIALS_FILE = Path("~/.mlflow/credentials")


class Credentials:
    """An MLflow user name and password, handed to Ray processes with their arguments."""

    __slots__ = ("_password", "username")

    def __init__(self, username: str, password: str) -> None:
        self.username, self._password = username, password

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return Credentials, (self.username, self._password)

    @property
    def auth(self) -> tuple[str, str]:
        """For ``requests``: ``auth=credentials.auth``."""
        return self.username, self._password

    def use(self) -> None:
        """Make this process's MLflow clients sign in as this user, unless its environment names
        one already."""
        if not os.environ.get(USER_ENV):
            os.environ[USER_ENV], os.environ[PASSWORD_ENV] = self.username, self._password


def current() -> Credentials | None:
    """This process's MLflow credentials, as MLflow finds them; None when it has none. A
    credentials file that others can read is refused."""
    from mlflow.utils.credentials import read_mlflow_creds

    path = CREDENTIALS_FILE.expanduser()
    if path.is_file() and path.stat().st_mode & 0o077:
        raise TrackingError(f"{path} holds a password but others can read it: chmod 600 {path}")
    found = read_mlflow_creds()
    return (
        Credentials(found.username, found.password) if found.username and found.password else None
    )


def sign_in_help(uri: str, credentials: Credentials | None) -> str:
    """What to do about a 401 from the server at ``uri``, in one line."""
    if credentials is None:
        return (
            f"the MLflow server at {uri} requires signing in: set {USER_ENV} and {PASSWORD_ENV} "
            f"(or write them to {CREDENTIALS_FILE}, mode 600)"
        )
    return (
        f"the MLflow server at {uri} refused the user '{credentials.username}': wrong password or "
        f"no such user ({USER_ENV} / {PASSWORD_ENV}, or {CREDENTIALS_FILE})"
    )
