"""Signing in to an MLflow server that requires it (``mlflow server --app-name basic-auth``).

Credentials come from where every MLflow client reads them: ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``, else the file ``~/.mlflow/credentials`` (mode 600), and never from
the experiment file. Ray processes that log or load models for a run (Ray Train's controller and
rank-0 worker, Serve replicas) get the driver's credentials inside their arguments, as a
``Credentials`` object: not as runtime-env variables, which Ray shows in job and actor details
and in the dashboard, and never printed (its repr hides the password).

A server over HTTPS with a certificate of the cluster's own CA (start_mlflow.sh with
MLFLOW_TLS=1) is verified with that CA: ``~/.mlflow/ca.pem`` where it exists (the cluster configs
copy it to every node), set as ``MLFLOW_TRACKING_SERVER_CERT_PATH`` for MLflow's own clients unless
that names another; Ray processes get it with the credentials, like the user and password.
"""

from __future__ import annotations

import os
from pathlib import Path

from raytrain.errors import TrackingError

__all__ = ["CA_FILE", "CREDENTIALS_FILE", "Credentials", "current", "server_cert", "sign_in_help"]

USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# Where MLflow's clients read a user name and password when the environment has none
# (mlflow.utils.credentials): an ini file, section [mlflow], keys mlflow_tracking_username and
# mlflow_tracking_password. The cluster configs write one on every node (start_mlflow.sh).
CREDENTIALS_FILE = Path("~/.mlflow/credentials")
# The CA that an HTTPS tracking server's certificate is checked with (MLflow's clients read
# MLFLOW_TRACKING_SERVER_CERT_PATH); start_mlflow.sh writes the cluster's there (MLFLOW_TLS=1).
CERT_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH"
CA_FILE = Path("~/.mlflow/ca.pem")


def server_cert() -> str | None:
    """The CA file this process checks an HTTPS tracking server with: the variable CERT_ENV, else
    ``~/.mlflow/ca.pem`` when it exists (then set in CERT_ENV, for MLflow's own clients); None:
    the system's CAs."""
    named = os.environ.get(CERT_ENV)
    if named:
        return named
    found = CA_FILE.expanduser()
    if found.is_file():
        os.environ[CERT_ENV] = str(found)
        return str(found)
    return None


class Credentials:
    """An MLflow user name and password, handed to Ray processes with their arguments."""

    __slots__ = ("_password", "server_cert", "username")

    def __init__(self, username: str, password: str, server_cert: str | None = None) -> None:
        self.username, self._password = username, password
        self.server_cert = server_cert  # the CA file the server is checked with, if any

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:
        return Credentials, (self.username, self._password, self.server_cert)

    @property
    def auth(self) -> tuple[str, str]:
        """For ``requests``: ``auth=credentials.auth``."""
        return self.username, self._password

    def use(self) -> None:
        """Make this process's MLflow clients sign in as this user, unless its environment names
        one already; and check an HTTPS server with the driver's CA file (where this node has it),
        else this node's ``~/.mlflow/ca.pem``."""
        if not os.environ.get(USER_ENV):
            os.environ[USER_ENV], os.environ[PASSWORD_ENV] = self.username, self._password
        if not os.environ.get(CERT_ENV) and self.server_cert and Path(self.server_cert).is_file():
            os.environ[CERT_ENV] = self.server_cert
        server_cert()


def current() -> Credentials | None:
    """This process's MLflow credentials, as MLflow finds them; None when it has none. A
    credentials file that others can read is refused. The CA file (server_cert) is set for
    MLflow's clients on the way."""
    from mlflow.utils.credentials import read_mlflow_creds

    cert = server_cert()
    path = CREDENTIALS_FILE.expanduser()
    if path.is_file() and path.stat().st_mode & 0o077:
        raise TrackingError(f"{path} holds a password but others can read it: chmod 600 {path}")
    found = read_mlflow_creds()
    if not (found.username and found.password):
        return None
    return Credentials(found.username, found.password, cert)


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
