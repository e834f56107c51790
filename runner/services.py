"""What a job needs from outside (settings, clock, AWS clients, the secret mask), passed in by the CLI or a test."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .aws import AwsClients
from .clock import Clock
from .credentials import Resolver
from .settings import Settings
from .stores import BackupStore, open_store
from .targets import Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """Everything a job needs from outside, passed in by the CLI (or a test)."""

    settings: Settings
    clock: Clock
    aws: AwsClients
    on_secret: Callable[[str], None] = lambda _secret: None

    def store(self, target: Target) -> BackupStore:
        return open_store(
            target.storage, lambda: self.aws.s3(target.region),
            self.settings.part_size_mb, self.settings.parallel_uploads,
        )

    def resolver(self, target: Target) -> Resolver:
        return Resolver(lambda: self.aws.ssm(target.region), on_secret=self.on_secret)


# --- backup -----------------------------------------------------------------------------------


def new_request_id() -> str:
    return uuid.uuid4().hex
