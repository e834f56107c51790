"""Object tags and the bucket's lifecycle rules: what S3 needs to keep and expire backups by tier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from ..aws import error_code, infra_error
from ..errors import NoBackup
from ..retention import TIER_TAG, Tier

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def tagging_header(tags: Mapping[str, str] | None) -> dict[str, Any]:
    """The `Tagging` argument of put_object / create_multipart_upload; nothing when there are no tags."""
    return {"Tagging": urlencode(dict(tags))} if tags else {}


def get_tags(client: S3Client, bucket: str, key: str) -> dict[str, str]:
    try:
        answer = client.get_object_tagging(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError) and error_code(exc) in ("NoSuchKey", "404"):
            raise NoBackup(f"s3://{bucket}/{key} does not exist") from exc
        raise infra_error(f"reading the tags of s3://{bucket}/{key}", exc) from exc
    return {tag["Key"]: tag["Value"] for tag in answer.get("TagSet", [])}


def set_tags(client: S3Client, bucket: str, key: str, tags: Mapping[str, str]) -> None:
    """Replace the object's tags (S3 has no per-tag update: the whole set is written)."""
    try:
        client.put_object_tagging(
            Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]},
        )
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError) and error_code(exc) in ("NoSuchKey", "404"):
            raise NoBackup(f"s3://{bucket}/{key} does not exist") from exc
        raise infra_error(f"tagging s3://{bucket}/{key}", exc) from exc


def tier_rules(client: S3Client, bucket: str, prefix: str) -> dict[Tier, int]:
    """Days after which the bucket's enabled rules expire each tier's objects under `prefix` (a tier without a rule is absent)."""
    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError) and error_code(exc) == "NoSuchLifecycleConfiguration":
            return {}
        raise infra_error(f"reading the lifecycle rules of bucket {bucket}", exc) from exc
    found: dict[Tier, int] = {}
    for rule in rules:
        days = rule.get("Expiration", {}).get("Days")
        if rule.get("Status") != "Enabled" or days is None:
            continue
        rule_filter = rule.get("Filter", {})
        both = rule_filter.get("And", {})
        if not prefix.startswith(rule_filter.get("Prefix", "") or both.get("Prefix", "") or rule.get("Prefix", "")):
            continue  # a rule for another part of the bucket
        tags = [rule_filter["Tag"]] if "Tag" in rule_filter else list(both.get("Tags", []))
        if len(tags) != 1:
            continue  # a rule that also needs another tag does not expire db-backup's objects
        for tag in tags:
            if tag.get("Key") == TIER_TAG and tag.get("Value") in Tier.__members__.values():
                tier = Tier(tag["Value"])
                found[tier] = min(days, found.get(tier, days))
    return found
