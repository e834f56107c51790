"""boto3 clients, created on first use from one session that the CLI makes."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# Only the exceptions at import: boto3 and botocore.config take longer to import than a small backup
# takes to run, and a job that never talks to AWS (a folder store, --help) should not pay for them.
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOError,
    TokenRetrievalError,
)

from .errors import InfraError

if TYPE_CHECKING:
    import boto3
    from botocore.config import Config
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient

_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"retries": {"max_attempts": 8, "mode": "adaptive"}, "connect_timeout": 10, "read_timeout": 120},
    # For calls made while cancel signals are held (run_task, stop_task): with the default a hung endpoint
    # could hold a cancel for 8 x 120 s; these end within about 30 s, and ECS answers them in about one.
    "held": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 10},
    # S3 has its own bounds: a dead or silent endpoint fails a command within about 3 minutes (3 attempts
    # of at most 10 s to connect and 60 s to answer) instead of the default's 8 x 120 s. 60 s is far more
    # than S3 needs to answer, even after a 16 MiB part.
    "s3": {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60},
    # Aborting a multipart upload, often on the way out of a cancel that must end within seconds: one
    # attempt of at most 3 + 5 s. An upload it fails to abort is removed by the next backup of the
    # target or by the bucket's lifecycle rule.
    "s3-abort": {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 3, "read_timeout": 5},
}


@functools.cache
def client_config(name: str) -> Config:
    """One of the botocore configs above, built on first use."""
    from botocore.config import Config

    return Config(**_CONFIGS[name])

# The abort client of each S3 client made here, for the stores built from it.
_ABORT_CLIENTS: weakref.WeakKeyDictionary[Any, Callable[[], Any]] = weakref.WeakKeyDictionary()


# botocore raises these before a request is sent: nothing happened on AWS, and retrying cannot help.
CREDENTIAL_ERRORS: tuple[type[BotoCoreError], ...] = (
    NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, ProfileNotFound, SSOError, TokenRetrievalError,
)


class AwsClients:
    """Lazily built clients per (service, region); nothing talks to AWS until asked."""

    def __init__(self, session: boto3.session.Session | None = None) -> None:
        self._session = session
        self._clients: dict[tuple[str, str, str], Any] = {}

    def _client(self, service: str, region: str, config: str = "default") -> Any:
        key = (service, region, config)
        if key not in self._clients:
            try:
                if self._session is None:
                    import boto3.session

                    self._session = boto3.session.Session()
                self._clients[key] = self._session.client(  # type: ignore[call-overload]
                    service, region_name=region, config=client_config(config))
            except BotoCoreError as exc:  # a profile that does not exist, half a key pair
                raise infra_error(f"setting up the AWS {service} client", exc) from exc
        return self._clients[key]

    def s3(self, region: str) -> S3Client:
        client: S3Client = self._client("s3", region, "s3")
        _ABORT_CLIENTS[client] = lambda: self.s3_abort(region)
        return client

    def s3_abort(self, region: str) -> S3Client:
        """S3 for abort_multipart_upload: one attempt, short timeouts."""
        client: S3Client = self._client("s3", region, "s3-abort")
        return client

    def ssm(self, region: str) -> SSMClient:
        client: SSMClient = self._client("ssm", region)
        return client

    def ecs(self, region: str) -> ECSClient:
        client: ECSClient = self._client("ecs", region)
        return client

    def ecs_held(self, region: str) -> ECSClient:
        """ECS for calls made while cancel signals are held: few retries, short timeouts."""
        client: ECSClient = self._client("ecs", region, "held")
        return client

    def logs(self, region: str) -> CloudWatchLogsClient:
        client: CloudWatchLogsClient = self._client("logs", region)
        return client


def abort_client_for(client: S3Client) -> S3Client:
    """The short-timeout, one-attempt sibling of an S3 client from AwsClients.s3; the client itself otherwise."""
    sibling = _ABORT_CLIENTS.get(client)
    made: S3Client = sibling() if sibling else client
    return made


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def infra_error(action: str, exc: Exception) -> InfraError:
    """Turn an AWS failure into one sentence that names the action and the AWS reason."""
    if isinstance(exc, NoCredentialsError):
        return InfraError(f"{action} failed: no AWS credentials found; configure them (aws configure, OIDC role) and retry")
    if isinstance(exc, CREDENTIAL_ERRORS):
        return InfraError(f"{action} failed: no usable AWS credentials ({exc}); fix them (aws configure, OIDC role) and retry")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        return InfraError(f"{action} failed: {code}: {message}".rstrip(": "))
    if isinstance(exc, BotoCoreError):
        return InfraError(f"{action} failed: {exc}")
    return InfraError(f"{action} failed: {exc}")
