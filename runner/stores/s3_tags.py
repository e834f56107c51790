"""Object tags and the bucket's lifecycle rules: what S3 needs to keep and expire backups by tier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from ..aws import error_code, infra_error
from ..errors import NoBackup
from ..retention import TIER_TAG, TIER_VALUES, Tier
from ..words import plural

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


@dataclass(frozen=True)
class Lifecycle:
    """What a bucket's enabled rules do to one folder's objects."""

    days: dict[Tier, int]  # each tier's expiry by its own tag rule
    problems: tuple[str, ...]  # rules that expire objects there regardless of tier (or pinned ones)


def read_lifecycle(client: S3Client, bucket: str, folder: str) -> Lifecycle:
    """The bucket's rules as they apply to `folder` (a target's key prefix)."""
    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError) and error_code(exc) == "NoSuchLifecycleConfiguration":
            return Lifecycle({}, ())
        raise infra_error(f"reading the lifecycle rules of bucket {bucket}", exc) from exc
    return judge_rules(cast("list[dict[str, Any]]", rules), folder)


def judge_rules(rules: list[dict[str, Any]], folder: str) -> Lifecycle:
    found: dict[Tier, int] = {}
    problems: list[str] = []
    for rule in rules:
        expiration = rule.get("Expiration", {})
        days, date = expiration.get("Days"), expiration.get("Date")
        if rule.get("Status") != "Enabled" or (days is None and date is None):
            continue  # disabled, or only noncurrent versions, delete markers, unfinished uploads
        name = f"lifecycle rule {rule.get('ID') or '(no id)'}"
        rule_filter = rule.get("Filter", {}) or {}
        both = rule_filter.get("And", {}) or {}
        rule_prefix = rule_filter.get("Prefix") or both.get("Prefix") or rule.get("Prefix") or ""
        if not (folder.startswith(rule_prefix) or rule_prefix.startswith(folder)):
            continue  # a rule for another part of the bucket
        tags = [rule_filter["Tag"]] if "Tag" in rule_filter else list(both.get("Tags", []))
        tier_tags = [t for t in tags if t.get("Key") == TIER_TAG]
        sized = any(k in rule_filter or k in both for k in ("ObjectSizeGreaterThan", "ObjectSizeLessThan"))
        when = f"after {plural(days, 'day')}" if days is not None else f"on {date}"
        if not tags:
            problems.append(f"{name} expires every object under {rule_prefix or 'the bucket'} {when}, whatever its tier or pin")
        elif len(tags) != 1 or not tier_tags:
            continue  # needs a tag db-backup never sets: it expires none of its objects
        elif tier_tags[0].get("Value") == Tier.PINNED.value:
            problems.append(f"{name} expires pinned backups {when}")
        elif sized or (rule_prefix.startswith(folder) and rule_prefix != folder) or days is None:
            problems.append(f"{name} expires only some {tier_tags[0].get('Value')} objects ({when}, by size, date or a "
                            "narrower prefix): a dump and its manifest may not expire together")
        elif tier_tags[0].get("Value") in TIER_VALUES:
            tier = Tier(tier_tags[0]["Value"])
            found[tier] = min(days, found.get(tier, days))
    return Lifecycle(found, tuple(problems))


def tier_rules(client: S3Client, bucket: str, folder: str) -> dict[Tier, int]:
    """Days after which the bucket's rules expire each tier's objects under `folder` (a tier without a rule is absent)."""
    return read_lifecycle(client, bucket, folder).days
