"""infra/db-backup.yaml: lint-clean, deploys on moto, expires backups only by their tier tag, and its IAM is least privilege.

Policy tests resolve the template's intrinsic functions for given parameters (a small evaluator
below) and then evaluate the trust policies' conditions against GitHub OIDC claims, so they
test what AWS would see, not the template's spelling.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra" / "db-backup.yaml"
SETUP_DOC = REPO / "docs" / "setup.md"

ACCOUNT = "123456789012"  # moto's default account, also used by the offline evaluator
REGION = "us-east-1"
ORG, REPO_NAME = "acme", "db-backup"
GH = f"repo:{ORG}/{REPO_NAME}"
SUB = "token.actions.githubusercontent.com:sub"
AUD = "token.actions.githubusercontent.com:aud"
EXISTING_PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
KMS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BUCKET = "acme-db-backups"

# Actions that have no resource-level permissions in IAM, so "*" is the only possible resource.
STAR_RESOURCE_ALLOWLIST = {"ecr:GetAuthorizationToken", "ecs:DescribeTaskDefinition"}

GITHUB_ROLES = ("BackupRole", "RestoreRole", "RestoreProductionRole", "ImagePushRole", "ReadRole")


# --------------------------------------------------------------------------- template loading


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags into their long (Fn::) form."""


_SHORT_TAGS = {
    "Ref",
    "Condition",
    "Sub",
    "GetAtt",
    "If",
    "Equals",
    "Select",
    "Split",
    "Join",
    "Not",
    "And",
    "Or",
    "FindInMap",
    "Base64",
    "GetAZs",
    "ImportValue",
    "Cidr",
}


def _short_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if suffix not in _SHORT_TAGS:
        raise yaml.constructor.ConstructorError(None, None, f"unknown tag !{suffix}", node.start_mark)
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _short_tag)


def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


# --------------------------------------------------------------------------- intrinsic evaluator

_NO_VALUE = object()
PSEUDO = {
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "db-backup",
}
BASE_PARAMS = {
    "GitHubOrg": ORG,
    "GitHubRepo": REPO_NAME,
    "VpcId": "vpc-0123456789abcdef0",
    "SubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "BucketName": BUCKET,
    "SsmParameterPrefixes": "/curation,/chipmunk,/mati",
}
# Every Condition flipped to its other branch: KMS key given, provider reused, image pinned.
FULL_PARAMS = {
    **BASE_PARAMS,
    "KmsKeyArn": KMS_KEY,
    "OidcProviderArn": EXISTING_PROVIDER,
    "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/db-backup@sha256:{'0' * 64}",
    # Weekly and monthly tiers off, yearly on (3 x 366): each tier condition on its other branch.
    "WeeklyRetentionDays": "0",
    "MonthlyRetentionDays": "0",
    "YearlyRetentionDays": "1098",
}
SCENARIOS = {"defaults": BASE_PARAMS, "all-options": FULL_PARAMS}


class Stack:
    """The template's resources as CloudFormation would create them for `params`."""

    def __init__(self, template: dict[str, Any], params: dict[str, str]) -> None:
        self.template = template
        self.params: dict[str, Any] = {}
        for name, spec in template["Parameters"].items():
            raw = params.get(name, spec.get("Default"))
            assert raw is not None, f"parameter {name} has no default and no value in the test"
            is_list = spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<")
            self.params[name] = str(raw).split(",") if is_list else str(raw)
        self._conditions: dict[str, bool] = {}

    # -- names CloudFormation would give the resources
    def _physical(self, logical: str) -> str:
        props = self.template["Resources"][logical].get("Properties", {})
        kind = self.template["Resources"][logical]["Type"]
        if kind == "AWS::IAM::OIDCProvider":
            return f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.actions.githubusercontent.com"
        if kind == "AWS::IAM::ManagedPolicy":
            return f"arn:aws:iam::{ACCOUNT}:policy/db-backup-{logical}"
        for key in ("BucketName", "ClusterName", "LogGroupName", "RepositoryName"):
            if key in props:
                return str(self.resolve(props[key]))
        return f"db-backup-{logical}"

    def _attribute(self, logical: str, attribute: str) -> str:
        kind = self.template["Resources"][logical]["Type"]
        name = self._physical(logical)
        arns = {
            "AWS::S3::Bucket": f"arn:aws:s3:::{name}",
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{name}",
            "AWS::ECS::Cluster": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{name}",
            "AWS::ECR::Repository": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}",
            "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*",
            "AWS::IAM::OIDCProvider": name,
        }
        if attribute == "Arn" and kind in arns:
            return arns[kind]
        if (kind, attribute) == ("AWS::ECR::Repository", "RepositoryUri"):
            return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}"
        if (kind, attribute) == ("AWS::EC2::SecurityGroup", "GroupId"):
            return "sg-0123456789abcdef0"
        raise AssertionError(f"the evaluator does not know {logical}.{attribute}")

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.params:
            return self.params[name]
        assert name in self.template["Resources"], f"Ref to unknown {name}"
        return self._physical(name)

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = self._test(self.template["Conditions"][name])
        return self._conditions[name]

    def _test(self, expr: dict[str, Any]) -> bool:
        ((op, arg),) = expr.items()
        if op == "Condition":
            return self.condition(arg)
        if op == "Fn::Equals":
            return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
        if op == "Fn::Not":
            return not self._test(arg[0])
        if op == "Fn::And":
            return all(self._test(a) for a in arg)
        if op == "Fn::Or":
            return any(self._test(a) for a in arg)
        raise AssertionError(f"unsupported condition function {op}")

    def _sub(self, text: str, variables: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(self.resolve(variables[name]))
            if "." in name and not name.startswith("AWS::"):
                return self._attribute(*name.split(".", 1))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                return self._attribute(arg[0], arg[1])
            if key == "Fn::If":
                return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else arg
                return self._sub(text, variables)
            if key == "Fn::Join":
                return arg[0].join(str(x) for x in self.resolve(arg[1]))
            if key == "Fn::Split":
                return str(self.resolve(arg[1])).split(arg[0])
            if key == "Fn::Select":
                return self.resolve(arg[1])[int(self.resolve(arg[0]))]
            assert not key.startswith("Fn::"), f"the evaluator does not support {key}"
        out = {}
        for key, value in node.items():
            resolved = self.resolve(value)
            if resolved is not _NO_VALUE:
                out[key] = resolved
        return out

    def resources(self) -> dict[str, dict[str, Any]]:
        """Logical id -> resolved resource, for resources whose Condition holds."""
        created = {}
        for logical, spec in self.template["Resources"].items():
            if "Condition" in spec and not self.condition(spec["Condition"]):
                continue
            created[logical] = {"Type": spec["Type"], **self.resolve(spec.get("Properties", {}))}
        return created

    def resource(self, logical: str) -> dict[str, Any]:
        return self.resources()[logical]

    def policy_documents(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(owner, document) for every permissions policy (trust policies excluded)."""
        for logical, res in self.resources().items():
            for policy in res.get("Policies", []):
                yield f"{logical}/{policy['PolicyName']}", policy["PolicyDocument"]
            if "PolicyDocument" in res:
                yield logical, res["PolicyDocument"]

    def statements(self, owner_prefix: str) -> list[dict[str, Any]]:
        found = [
            stmt
            for owner, doc in self.policy_documents()
            if owner == owner_prefix or owner.startswith(owner_prefix + "/")
            for stmt in doc["Statement"]
        ]
        assert found, f"no policy statements for {owner_prefix}"
        return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module", params=list(SCENARIOS), ids=list(SCENARIOS))
def stack(request: pytest.FixtureRequest, template: dict[str, Any]) -> Stack:
    return Stack(template, SCENARIOS[request.param])


# --------------------------------------------------------------------------- trust evaluation


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def _condition_holds(operator: str, actual: str | None, expected: Any) -> bool:
    values = [str(v) for v in as_list(expected)]
    negated = operator.startswith("StringNot")
    if actual is None:
        return negated
    if operator in ("StringEquals", "StringNotEquals"):
        hit = any(actual == v for v in values)
    elif operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        hit = any(actual.lower() == v.lower() for v in values)
    elif operator in ("StringLike", "StringNotLike"):
        hit = any(_glob(v).fullmatch(actual) for v in values)
    else:
        raise AssertionError(f"the trust evaluator does not know the operator {operator}")
    return not hit if negated else hit


def can_assume(stack: Stack, role: str, sub: str, aud: str = "sts.amazonaws.com") -> bool:
    """Would STS let a GitHub OIDC token with these claims assume the role?"""
    provider = stack.params["OidcProviderArn"] or stack._physical("GitHubOidcProvider")
    matching = [
        stmt for stmt in stack.resource(role)["AssumeRolePolicyDocument"]["Statement"]
        if "sts:AssumeRoleWithWebIdentity" in as_list(stmt["Action"])
        and provider in as_list(stmt["Principal"].get("Federated", []))
    ]
    return _verdict(matching, {SUB: sub, AUD: aud})


def _verdict(statements: list[dict[str, Any]], context: dict[str, str]) -> bool:
    """IAM's evaluation of statements that match the request: an explicit Deny wins, else any Allow."""
    allowed = False
    for stmt in statements:
        holds = all(
            _condition_holds(op, context.get(key), expected)
            for op, block in stmt.get("Condition", {}).items()
            for key, expected in block.items()
        )
        if holds and stmt["Effect"] == "Deny":
            return False
        allowed = allowed or (holds and stmt["Effect"] == "Allow")
    return allowed


SUBJECTS = {
    "main": f"{GH}:ref:refs/heads/main",
    "feature-branch": f"{GH}:ref:refs/heads/feature",
    "main-lookalike-branch": f"{GH}:ref:refs/heads/main-x",
    "tag": f"{GH}:ref:refs/tags/v1.0.0",
    "pull_request": f"{GH}:pull_request",
    "env-production": f"{GH}:environment:production",
    "env-Production": f"{GH}:environment:Production",
    "env-PRODUCTION": f"{GH}:environment:PRODUCTION",
    "env-production-old": f"{GH}:environment:production-old",
    "env-beta": f"{GH}:environment:beta",
    "env-alpha": f"{GH}:environment:alpha",
    "env-dev": f"{GH}:environment:dev",
    "other-repo-main": f"repo:{ORG}/other:ref:refs/heads/main",
    "prefix-repo-env-beta": f"repo:{ORG}/{REPO_NAME}-fork:environment:beta",
    "prefix-repo-production": f"repo:{ORG}/{REPO_NAME}-fork:environment:production",
    "other-org-production": f"repo:evil/{REPO_NAME}:environment:production",
    "other-org-main": f"repo:evil/{REPO_NAME}:ref:refs/heads/main",
}

EXPECTED_TRUST = {
    "BackupRole": {"main"},
    "ImagePushRole": {"main"},
    "ReadRole": {"main"},
    "RestoreProductionRole": {"env-production"},
    "RestoreRole": {"env-beta", "env-alpha", "env-dev", "env-production-old"},
}


# --------------------------------------------------------------------------- static checks


def test_cfn_lint_reports_nothing() -> None:
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "cfn-lint"), str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_template_takes_the_documented_parameters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    for name in [
        "GitHubOrg",
        "GitHubRepo",
        "DefaultBranch",
        "VpcId",
        "SubnetIds",
        "ImageUri",
        "BucketName",
        "DailyRetentionDays",
        "WeeklyRetentionDays",
        "MonthlyRetentionDays",
        "YearlyRetentionDays",
        "TaskCpu",
        "TaskMemory",
        "EphemeralStorageGiB",
        "KmsKeyArn",
        "OidcProviderArn",
        "SsmParameterPrefixes",
    ]:
        assert name in params, name
    assert params["SsmParameterPrefixes"]["Type"] == "CommaDelimitedList"
    assert params["SubnetIds"]["Type"] == "List<AWS::EC2::Subnet::Id>"
    assert params["OidcProviderArn"]["Default"] == ""
    assert params["KmsKeyArn"]["Default"] == ""
    assert params["DefaultBranch"]["Default"] == "main"
    # Retention is per tier now; a single unfiltered expiry would also expire pinned backups.
    assert "RetentionDays" not in params


# --------------------------------------------------------------------------- retention tiers

TIER_TAG = "db-backup-tier"
TIER_PARAMETERS = {
    "daily": "DailyRetentionDays",
    "weekly": "WeeklyRetentionDays",
    "monthly": "MonthlyRetentionDays",
    "yearly": "YearlyRetentionDays",
}


def lifecycle_rules(stack: Stack) -> list[dict[str, Any]]:
    return list(stack.resource("BackupBucket")["LifecycleConfiguration"]["Rules"])


def expiry_days(rules: list[dict[str, Any]], tags: dict[str, str]) -> str | None:
    """After how many days S3 would expire the current version of an object with these tags (None: never)."""
    days = [
        rule["ExpirationInDays"]
        for rule in rules
        if rule["Status"] == "Enabled"
        and "ExpirationInDays" in rule
        and not rule.get("Prefix")
        and all(tags.get(f["Key"]) == f["Value"] for f in rule.get("TagFilters", []))
    ]
    return min(days, key=int) if days else None


def test_retention_parameters_default_to_the_targets_yaml_default_policy(template: dict[str, Any]) -> None:
    from runner.retention import DEFAULT_RETENTION, Tier

    params = template["Parameters"]
    for tier, name in TIER_PARAMETERS.items():
        # CloudFormation cannot multiply, so the defaults are the products, written out.
        assert int(params[name]["Default"]) == (DEFAULT_RETENTION.keep_days(Tier(tier)) or 0), name
        description = " ".join(params[name]["Description"].split())
        assert f"retention.{tier} x " in description, name
        assert "targets.yaml retention" in description, name
    # Daily cannot be off: every backup that is not weekly, monthly or yearly is daily.
    assert params["DailyRetentionDays"]["MinValue"] == 1
    for name in ("WeeklyRetentionDays", "MonthlyRetentionDays", "YearlyRetentionDays"):
        assert params[name]["MinValue"] == 0, name  # 0: the tier is off, no rule
    assert "db-backup retention IDENT ENV" in " ".join(params["DailyRetentionDays"]["Description"].split())


def test_bucket_lifecycle_expires_each_tier_by_its_tag(stack: Stack) -> None:
    rules = {r["Id"]: r for r in lifecycle_rules(stack)}
    for each in rules.values():
        assert each["Status"] == "Enabled"
        assert not {"Prefix", "ObjectSizeGreaterThan", "ObjectSizeLessThan"} & set(each)  # no part of the bucket left out
    tier_rules = {rule_id: rule for rule_id, rule in rules.items() if "TagFilters" in rule}
    expected = {f"tier-{tier}" for tier, name in TIER_PARAMETERS.items() if stack.params[name] != "0"}
    assert set(tier_rules) == expected
    for rule_id, rule in tier_rules.items():
        tier = rule_id.removeprefix("tier-")
        assert rule == {
            "Id": rule_id,
            "Status": "Enabled",
            "TagFilters": [{"Key": TIER_TAG, "Value": tier}],
            "ExpirationInDays": stack.params[TIER_PARAMETERS[tier]],
        }
    # Each tier's expiry is its own parameter, not a copy of another's.
    for rule in stack.template["Resources"]["BackupBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]:
        spec = rule["Fn::If"][1] if "Fn::If" in rule else rule
        if "TagFilters" in spec:
            (tag,) = spec["TagFilters"]
            assert spec["ExpirationInDays"] == {"Ref": TIER_PARAMETERS[tag["Value"]]}


def test_old_versions_and_stale_uploads_go_whatever_the_tags(stack: Stack) -> None:
    rules = {r["Id"]: r for r in lifecycle_rules(stack)}
    assert rules["expired-delete-markers"] == {"Id": "expired-delete-markers", "Status": "Enabled", "ExpiredObjectDeleteMarker": True}
    (rule,) = [r for r in rules.values() if "NoncurrentVersionExpiration" in r or "AbortIncompleteMultipartUpload" in r]
    assert rule == {
        "Id": rule["Id"],
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": "30"},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    # Exactly: tier rules, this one, the delete markers; nothing else expires anything.
    assert len(rules) == 2 + sum(stack.params[name] != "0" for name in TIER_PARAMETERS.values())


def test_no_rule_expires_an_object_without_a_tier_tag(stack: Stack) -> None:
    rules = lifecycle_rules(stack)
    for rule in rules:
        if {"ExpirationInDays", "ExpirationDate"} & set(rule):
            assert [f["Key"] for f in rule["TagFilters"]] == [TIER_TAG], rule["Id"]
            assert rule["TagFilters"][0]["Value"] in TIER_PARAMETERS, rule["Id"]
    # What S3 would do with objects written before tier tags, pinned ones, and each tier.
    assert expiry_days(rules, {}) is None
    assert expiry_days(rules, {"project": "x"}) is None
    assert expiry_days(rules, {TIER_TAG: "pinned"}) is None
    assert expiry_days(rules, {TIER_TAG: "pinned", "db-backup-pinned-from": "daily"}) is None
    assert expiry_days(rules, {TIER_TAG: "hourly"}) is None
    for tier, name in TIER_PARAMETERS.items():
        days = stack.params[name]
        assert expiry_days(rules, {TIER_TAG: tier, "project": "x"}) == (None if days == "0" else days), tier


@pytest.mark.parametrize(
    ("params", "tiers"),
    [
        ({}, {"daily": "7", "weekly": "35", "monthly": "372"}),
        ({"YearlyRetentionDays": "1098"}, {"daily": "7", "weekly": "35", "monthly": "372", "yearly": "1098"}),
        ({"WeeklyRetentionDays": "0"}, {"daily": "7", "monthly": "372"}),
        ({"MonthlyRetentionDays": "0", "DailyRetentionDays": "14"}, {"daily": "14", "weekly": "35"}),
        ({"WeeklyRetentionDays": "0", "MonthlyRetentionDays": "0", "YearlyRetentionDays": "0"}, {"daily": "7"}),
    ],
    ids=["defaults-no-yearly", "yearly-3", "weekly-off", "monthly-off", "daily-only"],
)
def test_a_tier_of_zero_days_has_no_rule(template: dict[str, Any], params: dict[str, str], tiers: dict[str, str]) -> None:
    rules = lifecycle_rules(Stack(template, {**BASE_PARAMS, **params}))
    found = {r["TagFilters"][0]["Value"]: r["ExpirationInDays"] for r in rules if "TagFilters" in r}
    assert found == tiers


# --------------------------------------------------------------------------- trust policies


@pytest.mark.parametrize("role", sorted(EXPECTED_TRUST))
def test_each_github_role_trusts_exactly_its_subjects(stack: Stack, role: str) -> None:
    allowed = {name for name, sub in SUBJECTS.items() if can_assume(stack, role, sub)}
    assert allowed == EXPECTED_TRUST[role]


def test_production_restore_role_only_trusts_the_production_environment(stack: Stack) -> None:
    assert can_assume(stack, "RestoreProductionRole", f"{GH}:environment:production")
    for name, sub in SUBJECTS.items():
        if name != "env-production":
            assert not can_assume(stack, "RestoreProductionRole", sub), name


def test_restore_role_cannot_be_assumed_from_production_in_any_spelling(stack: Stack) -> None:
    assert can_assume(stack, "RestoreRole", f"{GH}:environment:beta")
    for spelling in ("production", "Production", "PRODUCTION", "pRoDuCtIoN"):
        assert not can_assume(stack, "RestoreRole", f"{GH}:environment:{spelling}"), spelling


def test_backup_role_is_not_assumable_from_pull_requests_or_other_refs(stack: Stack) -> None:
    assert can_assume(stack, "BackupRole", f"{GH}:ref:refs/heads/main")
    for sub in (f"{GH}:pull_request", f"{GH}:ref:refs/heads/feature", f"{GH}:ref:refs/pull/7/merge"):
        assert not can_assume(stack, "BackupRole", sub), sub


def test_backup_role_follows_the_default_branch_parameter(template: dict[str, Any]) -> None:
    stack = Stack(template, {**BASE_PARAMS, "DefaultBranch": "trunk"})
    assert can_assume(stack, "BackupRole", f"{GH}:ref:refs/heads/trunk")
    assert can_assume(stack, "ImagePushRole", f"{GH}:ref:refs/heads/trunk")
    assert not can_assume(stack, "BackupRole", f"{GH}:ref:refs/heads/main")


@pytest.mark.parametrize("role", GITHUB_ROLES)
def test_every_trust_policy_requires_the_sts_audience(stack: Stack, role: str) -> None:
    good = next(SUBJECTS[name] for name in sorted(EXPECTED_TRUST[role]))
    assert can_assume(stack, role, good)
    assert not can_assume(stack, role, good, aud="https://github.com/acme")
    for stmt in stack.resource(role)["AssumeRolePolicyDocument"]["Statement"]:
        assert stmt["Condition"]["StringEquals"][AUD] == "sts.amazonaws.com"


def test_oidc_provider_is_created_unless_an_existing_one_is_given(template: dict[str, Any]) -> None:
    provider = template["Resources"]["GitHubOidcProvider"]
    assert provider["Type"] == "AWS::IAM::OIDCProvider"
    assert provider["Properties"]["Url"] == "https://token.actions.githubusercontent.com"
    assert provider["Properties"]["ClientIdList"] == ["sts.amazonaws.com"]

    created = Stack(template, BASE_PARAMS)
    reused = Stack(template, FULL_PARAMS)
    assert "GitHubOidcProvider" in created.resources()
    assert "GitHubOidcProvider" not in reused.resources()
    for role in GITHUB_ROLES:
        for stack, arn in ((created, created._physical("GitHubOidcProvider")), (reused, EXISTING_PROVIDER)):
            principals = {
                p for s in stack.resource(role)["AssumeRolePolicyDocument"]["Statement"] for p in as_list(s["Principal"]["Federated"])
            }
            assert principals == {arn}, role


# --------------------------------------------------------------------------- permissions


def test_no_statement_allows_wildcard_actions_and_star_resources_are_allowlisted(stack: Stack) -> None:
    owners = set()
    for owner, doc in stack.policy_documents():
        owners.add(owner.split("/")[0])
        for stmt in doc["Statement"]:
            assert "NotAction" not in stmt and "NotResource" not in stmt, owner
            if stmt["Effect"] != "Allow":
                continue
            actions = as_list(stmt["Action"])
            assert not [a for a in actions if "*" in a], (owner, actions)
            if "*" in as_list(stmt["Resource"]):
                assert set(actions) <= STAR_RESOURCE_ALLOWLIST, (owner, actions)
    # Guard against the walk above silently missing a policy.
    assert owners >= {"TaskRole", "DrillTaskRole", "TaskExecutionRole", "ImagePushRole", "ControlPlanePolicy", "BackupBucketPolicy"}


def test_every_star_resource_is_explained_by_a_comment() -> None:
    lines = TEMPLATE.read_text(encoding="utf-8").splitlines()
    stars = [i for i, line in enumerate(lines) if re.fullmatch(r'\s*Resource: "\*"\s*', line)]
    assert stars
    for i in stars:
        assert any(line.lstrip().startswith("#") for line in lines[max(0, i - 4) : i]), i + 1


def test_bucket_is_private_versioned_encrypted_and_tls_only(stack: Stack) -> None:
    bucket = stack.resource("BackupBucket")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert stack.template["Resources"]["BackupBucket"]["DeletionPolicy"] == "Retain"
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    if stack.params["KmsKeyArn"]:
        assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KMS_KEY}
    else:
        assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}

    policy = stack.resource("BackupBucketPolicy")
    assert policy["Bucket"] == BUCKET
    deny_plain_http = [
        s
        for s in policy["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s["Principal"] == "*"
        and "s3:*" in as_list(s["Action"])
        and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(deny_plain_http) == 1
    assert set(as_list(deny_plain_http[0]["Resource"])) == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}



def _s3_resources(statements: list[dict[str, Any]]) -> set[str]:
    return {r for s in statements if any(a.startswith("s3:") for a in as_list(s["Action"])) for r in as_list(s["Resource"])}


def test_task_role_s3_access_is_only_its_bucket_and_never_delete(stack: Stack) -> None:
    statements = stack.statements("TaskRole")
    assert _s3_resources(statements) == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}
    s3_actions = {a for s in statements for a in as_list(s["Action"]) if a.startswith("s3:")}
    assert {"s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:AbortMultipartUpload"} <= s3_actions
    assert not [a for a in s3_actions if "Delete" in a or "Lifecycle" in a]
    # Object actions on objects, bucket actions on the bucket: never mixed up.
    for s in statements:
        for action in as_list(s["Action"]):
            if action in ("s3:ListBucket", "s3:ListBucketMultipartUploads"):
                assert as_list(s["Resource"]) == [f"arn:aws:s3:::{BUCKET}"]
            elif action.startswith("s3:"):
                assert as_list(s["Resource"]) == [f"arn:aws:s3:::{BUCKET}/*"]


TAGGING = ("s3:GetObjectTagging", "s3:PutObjectTagging")
# What would let a role destroy backups or change when they expire; lifecycle alone deletes.
DESTRUCTIVE = (
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:DeleteObjectTagging",
    "s3:DeleteObjectVersionTagging",
    "s3:PutObjectVersionTagging",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketVersioning",
    "s3:PutBucketPolicy",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketObjectLockConfiguration",
)


def test_task_role_tags_the_objects_of_its_bucket_only(stack: Stack) -> None:
    statements = stack.statements("TaskRole")
    key = f"arn:aws:s3:::{BUCKET}/curation/production/2026-01-01_00-00-00.dump"
    for action in TAGGING:
        # Backups are written with their tier tag; drills retag the next good backup of a period.
        assert permits(statements, action, key), action
        assert permits(statements, action, key + ".json"), action
        assert not permits(statements, action, f"arn:aws:s3:::other-bucket/{key.split(':::', 1)[1]}"), action
        assert not permits(statements, action, f"arn:aws:s3:::{BUCKET}"), action
    tagging = [s for s in statements if set(TAGGING) & set(as_list(s["Action"]))]
    assert tagging and all(as_list(s["Resource"]) == [f"arn:aws:s3:::{BUCKET}/*"] for s in tagging)
    # Tags of the current version only: no version tagging, no tag deletion.
    for action in ("s3:PutObjectVersionTagging", "s3:DeleteObjectTagging", "s3:GetObjectVersionTagging"):
        assert not permits(statements, action, key), action


@pytest.mark.parametrize("role", ["TaskRole", "NonProductionTaskRole", "DrillTaskRole", "TaskExecutionRole", *GITHUB_ROLES])
def test_no_role_may_delete_backups_or_change_the_lifecycle(stack: Stack, role: str) -> None:
    statements = role_statements(stack, role)
    for resource in (f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*", f"arn:aws:s3:::{BUCKET}/curation/production/x.dump"):
        for action in DESTRUCTIVE:
            assert not permits(statements, action, resource), (role, action, resource)


def test_only_the_task_role_and_the_drill_task_role_tag_objects(stack: Stack) -> None:
    key = f"arn:aws:s3:::{BUCKET}/curation/production/2026-01-01_00-00-00.dump"
    # Restores read; the GitHub roles only start tasks and read manifests. Pins are an operator's.
    for role in ("NonProductionTaskRole", "TaskExecutionRole", *GITHUB_ROLES):
        for action in TAGGING:
            assert not permits(role_statements(stack, role), action, key), (role, action)
    # Backups tag what they write; drills tag their record and promote the next good backup of a period.
    for role in ("TaskRole", "DrillTaskRole"):
        for action in TAGGING:
            assert permits(role_statements(stack, role), action, key), (role, action)
        for tier in ("monthly", "yearly", "pinned"):
            existing = {"s3:ExistingObjectTag/db-backup-tier": tier}
            assert not permits(role_statements(stack, role), "s3:PutObjectTagging", key, existing), (role, tier)
        for tier in ("daily", "weekly"):
            existing = {"s3:ExistingObjectTag/db-backup-tier": tier}
            assert permits(role_statements(stack, role), "s3:PutObjectTagging", key, existing), (role, tier)


def ssm_arn(prefix: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{prefix}/*"


@pytest.mark.parametrize(
    ("prefixes", "granted"),
    [
        ("/curation,/chipmunk,/mati", ["/curation", "/chipmunk", "/mati"]),
        ("/curation", ["/curation"]),
        (",".join(f"/db{i}" for i in range(10)), [f"/db{i}" for i in range(10)]),
        # Beyond the ten slots nothing more is granted (denied, never widened).
        (",".join(f"/db{i}" for i in range(12)), [f"/db{i}" for i in range(10)]),
    ],
    ids=["three", "one", "ten", "twelve"],
)
def test_task_role_reads_only_the_configured_ssm_paths(template: dict[str, Any], prefixes: str, granted: list[str]) -> None:
    stack = Stack(template, {**BASE_PARAMS, "SsmParameterPrefixes": prefixes})
    statements = stack.statements("TaskRole")
    ssm = [s for s in statements if any(a.startswith("ssm:") for a in as_list(s["Action"]))]
    assert len(ssm) == 1
    assert sorted(as_list(ssm[0]["Action"])) == ["ssm:GetParameter", "ssm:GetParameters"]
    assert as_list(ssm[0]["Resource"]) == [ssm_arn(p) for p in granted]

    (decrypt,) = [s for s in statements if "kms:Decrypt" in as_list(s["Action"]) and "Condition" in s]
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": f"ssm.{REGION}.amazonaws.com"}}
    assert decrypt["Resource"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"


def test_kms_key_is_usable_only_when_given(stack: Stack) -> None:
    key_statements = [
        s
        for s in stack.statements("TaskRole") + stack.statements("ControlPlanePolicy")
        if any(a.startswith("kms:") for a in as_list(s["Action"])) and "Condition" not in s
    ]
    if stack.params["KmsKeyArn"]:
        assert {r for s in key_statements for r in as_list(s["Resource"])} == {KMS_KEY}
        assert {a for s in key_statements for a in as_list(s["Action"])} == {"kms:Decrypt", "kms:GenerateDataKey"}
    else:
        assert key_statements == []


def test_github_roles_can_only_drive_this_task(stack: Stack) -> None:
    policy = stack.resource("ControlPlanePolicy")
    assert sorted(policy["Roles"]) == sorted(stack._physical(r) for r in ("BackupRole", "RestoreRole", "RestoreProductionRole"))
    by_action: dict[str, list[dict[str, Any]]] = {}
    for stmt in policy["PolicyDocument"]["Statement"]:
        assert stmt["Effect"] == "Allow"
        for action in as_list(stmt["Action"]):
            by_action.setdefault(action, []).append(stmt)

    cluster = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/db-backup"
    tasks = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/db-backup/*"
    (run,) = by_action["ecs:RunTask"]
    assert run["Resource"] == f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/db-backup:*"
    assert run["Condition"] == {"ArnEquals": {"ecs:cluster": cluster}}
    for action in ("ecs:StopTask", "ecs:DescribeTasks"):
        (stmt,) = by_action[action]
        assert stmt["Resource"] == tasks
    (tag,) = by_action["ecs:TagResource"]
    assert tag["Resource"] == tasks
    # The runner reads the container and log settings from the task definition; IAM takes only "*" for it.
    (describe,) = by_action["ecs:DescribeTaskDefinition"]
    assert describe["Resource"] == "*" and as_list(describe["Action"]) == ["ecs:DescribeTaskDefinition"]
    assert tag["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}

    # iam:PassRole is not shared: each role gets its own (test_each_github_role_passes_only_its_task_roles).
    assert "iam:PassRole" not in by_action

    log_group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/ecs/db-backup:*"
    for action in ("logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"):
        assert [s["Resource"] for s in by_action[action]] == [log_group]

    assert _s3_resources(policy["PolicyDocument"]["Statement"]) == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}
    s3_actions = {a for a in by_action if a.startswith("s3:")}
    assert s3_actions == {"s3:ListBucket", "s3:GetObject"}  # read-only: the task writes
    expected = {
        "ecs:RunTask",
        "ecs:StopTask",
        "ecs:DescribeTasks",
        "ecs:DescribeTaskDefinition",
        "ecs:TagResource",
        "logs:GetLogEvents",
        "logs:FilterLogEvents",
        "logs:DescribeLogStreams",
        *s3_actions,
    }
    if stack.params["KmsKeyArn"]:
        expected.add("kms:Decrypt")
    assert set(by_action) == expected


# --------------------------------------------------------------------------- permission evaluation


def role_statements(stack: Stack, role: str) -> list[dict[str, Any]]:
    """Every permissions statement of `role`: its inline policies and the managed policies attached to it."""
    physical = stack._physical(role)
    found = [stmt for policy in stack.resource(role).get("Policies", []) for stmt in policy["PolicyDocument"]["Statement"]]
    for res in stack.resources().values():
        if res["Type"] == "AWS::IAM::ManagedPolicy" and physical in res.get("Roles", []):
            found += res["PolicyDocument"]["Statement"]
    return found


def permits(statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    """IAM's verdict for one request: an explicit Deny wins, otherwise any matching Allow (implicit deny)."""
    matching = [
        stmt for stmt in statements
        if any(_glob(a.lower()).fullmatch(action.lower()) for a in as_list(stmt["Action"]))
        and any(_glob(r).fullmatch(resource) for r in as_list(stmt["Resource"]))
    ]
    return _verdict(matching, context or {})


def parameter_arn(name: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name}"


SSM_READS = ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath")


def test_nonproduction_task_role_explicitly_denies_production_parameters(stack: Stack) -> None:
    nonprod = stack.statements("NonProductionTaskRole")
    main = stack.statements("TaskRole")
    production = [f"/{ident}/production/db/backup/{leaf}" for ident in ("curation", "chipmunk", "mati") for leaf in ("host", "password")]
    for name in production:
        for action in SSM_READS:
            assert not permits(nonprod, action, parameter_arn(name)), (action, name)
        # Backups and production restores still read them (as before).
        assert permits(main, "ssm:GetParameter", parameter_arn(name)), name
    # The restriction is an explicit Deny, so no prefix granted now or later can widen it.
    denies = [s for s in nonprod if s["Effect"] == "Deny"]
    assert len(denies) == 1
    assert sorted(as_list(denies[0]["Action"])) == sorted(SSM_READS)
    assert as_list(denies[0]["Resource"]) == [parameter_arn("/*/production/*")]
    assert "Condition" not in denies[0]
    # Other environments remain readable.
    for env in ("beta", "alpha", "dev"):
        assert permits(nonprod, "ssm:GetParameter", parameter_arn(f"/curation/{env}/db/backup/password")), env
        assert permits(nonprod, "ssm:GetParameters", parameter_arn(f"/mati/{env}/db/backup/host")), env


def test_nonproduction_task_role_reads_the_bucket_and_writes_nothing(stack: Stack) -> None:
    def allows(owner: str) -> list[dict[str, Any]]:
        return [s for s in stack.statements(owner) if s["Effect"] == "Allow"]

    nonprod, main = stack.statements("NonProductionTaskRole"), stack.statements("TaskRole")
    # The same SSM grants as the task role (minus production, by the Deny above)...
    ssm = [s for s in allows("TaskRole") if any(a.startswith("ssm:") for a in as_list(s["Action"]))
           or "kms:ViaService" in s.get("Condition", {}).get("StringEquals", {})]
    assert ssm and all(s in allows("NonProductionTaskRole") for s in ssm)
    # The task role's one Deny keeps it from retagging the longest-kept backups (a delayed delete).
    assert [s for s in main if s["Effect"] == "Deny"] == [{
        "Sid": "KeepLongLivedTiers", "Effect": "Deny", "Action": "s3:PutObjectTagging", "Resource": f"arn:aws:s3:::{BUCKET}/*",
        "Condition": {"StringEquals": {"s3:ExistingObjectTag/db-backup-tier": ["monthly", "yearly", "pinned"]}},
    }]
    # ...and read-only S3: a restore reads any environment's dumps, and writes none.
    for env in ("production", "beta"):
        key = f"arn:aws:s3:::{BUCKET}/curation/{env}/2026-01-01_00-00-00.dump"
        assert permits(nonprod, "s3:GetObject", key), env
        assert permits(main, "s3:PutObject", key), env
        for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:PutObjectAcl", "s3:CopyObject"):
            assert not permits(nonprod, action, key), (action, env)
            assert not permits(nonprod, action, key + ".json"), (action, env)
    assert permits(nonprod, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}")
    key = f"arn:aws:s3:::{BUCKET}/curation/production/2026-01-01_00-00-00.dump"
    for action in TAGGING:  # a restore never pins, unpins or promotes
        assert not permits(nonprod, action, key), action
    written = {a for s in allows("NonProductionTaskRole") for a in as_list(s["Action"]) if a.startswith("s3:")}
    assert written == {"s3:GetObject", "s3:ListBucket"}


PASSABLE = {
    # drill.yml assumes BackupRole: drills start as DrillTaskRole.
    "BackupRole": {"TaskRole", "DrillTaskRole", "TaskExecutionRole"},
    "RestoreProductionRole": {"TaskRole", "TaskExecutionRole"},
    "RestoreRole": {"NonProductionTaskRole", "TaskExecutionRole"},
    "ImagePushRole": set(),
    "ReadRole": set(),
}


@pytest.mark.parametrize("role", list(PASSABLE))
def test_each_github_role_passes_only_its_task_roles(stack: Stack, role: str) -> None:
    statements = role_statements(stack, role)
    to_ecs = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    for candidate in ("TaskRole", "NonProductionTaskRole", "DrillTaskRole", "TaskExecutionRole"):
        arn = f"arn:aws:iam::{ACCOUNT}:role/{stack._physical(candidate)}"
        assert permits(statements, "iam:PassRole", arn, to_ecs) == (candidate in PASSABLE[role]), (role, candidate)
        # ...and only to ECS tasks.
        assert not permits(statements, "iam:PassRole", arn, {"iam:PassedToService": "lambda.amazonaws.com"}), (role, candidate)
        assert not permits(statements, "iam:PassRole", arn), (role, candidate)


def test_restore_role_cannot_pass_the_main_task_role(stack: Stack) -> None:
    # The gap this closes: a job in environment beta starting `restore --to production` as TaskRole.
    task_role = f"arn:aws:iam::{ACCOUNT}:role/{stack._physical('TaskRole')}"
    to_ecs = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    assert not permits(role_statements(stack, "RestoreRole"), "iam:PassRole", task_role, to_ecs)
    nonprod = f"arn:aws:iam::{ACCOUNT}:role/{stack._physical('NonProductionTaskRole')}"
    for role in ("BackupRole", "RestoreProductionRole"):
        assert not permits(role_statements(stack, role), "iam:PassRole", nonprod, to_ecs), role


def test_drill_task_role_reads_no_database_credentials(stack: Stack) -> None:
    # A drill runs the dump's SQL as superuser inside the task: its role must not reach any password.
    drill = stack.statements("DrillTaskRole")
    assert not [a for s in drill for a in as_list(s["Action"]) if a.startswith("ssm:")]
    assert not [s for s in drill if "kms:ViaService" in json.dumps(s.get("Condition", {}))]
    for env in ("production", "beta"):
        for action in SSM_READS:
            assert not permits(drill, action, parameter_arn(f"/curation/{env}/db/backup/password")), (action, env)
    any_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/11111111-2222-3333-4444-555555555555"
    assert not permits(drill, "kms:Decrypt", any_key, {"kms:ViaService": f"ssm.{REGION}.amazonaws.com"})
    kms = [s for s in drill if any(a.startswith("kms:") for a in as_list(s["Action"]))]
    if stack.params["KmsKeyArn"]:
        # The bucket's key only: to read the dump and to write the record.
        assert [as_list(s["Resource"]) for s in kms] == [[KMS_KEY]]
        assert {a for s in kms for a in as_list(s["Action"])} == {"kms:Decrypt", "kms:GenerateDataKey"}
    else:
        assert kms == []


def test_drill_task_role_reads_the_bucket_and_writes_only_drill_records(stack: Stack) -> None:
    drill = stack.statements("DrillTaskRole")
    prefix = f"arn:aws:s3:::{BUCKET}/curation/production/2026-01-01_00-00-00"
    assert permits(drill, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}")
    for key in (prefix + ".dump", prefix + ".dump.json", prefix + ".dump.drill.json"):
        assert permits(drill, "s3:GetObject", key), key
        assert not permits(drill, "s3:GetObject", key.replace(BUCKET, "other-bucket")), key
    assert permits(drill, "s3:PutObject", prefix + ".dump.drill.json")
    # No dump, manifest or other record can be written or overwritten.
    for suffix in (".dump", ".dump.json", ".dump.verify.json", ".dump.pin.json", ".dump.ack.json", ".globals.sql"):
        assert not permits(drill, "s3:PutObject", prefix + suffix), suffix
    assert not permits(drill, "s3:PutObject", "arn:aws:s3:::other-bucket/x.drill.json")
    puts = [s for s in drill if s["Effect"] == "Allow" and "s3:PutObject" in as_list(s["Action"])]
    assert [as_list(s["Resource"]) for s in puts] == [[f"arn:aws:s3:::{BUCKET}/*.drill.json"]]
    for action in ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload", "s3:PutObjectAcl",
                   "s3:PutObjectVersionTagging", "s3:DeleteObjectTagging"):
        assert not permits(drill, action, prefix + ".dump.drill.json"), action
        assert not permits(drill, action, prefix + ".dump"), action
    actions = {a for s in drill if s["Effect"] == "Allow" for a in as_list(s["Action"])}
    assert not [a for a in actions if a.startswith("s3:Delete")]
    assert {a for a in actions if a.startswith("s3:")} == {
        "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:GetObjectTagging", "s3:PutObjectTagging"}
    # The same Deny as the task role keeps the longest-kept backups from being retagged.
    denies = [s for s in drill if s["Effect"] == "Deny"]
    assert denies == [s for s in stack.statements("TaskRole") if s["Effect"] == "Deny"]
    assert [s["Sid"] for s in denies] == ["KeepLongLivedTiers"]


def test_only_the_backup_role_passes_the_drill_task_role(stack: Stack) -> None:
    drill = f"arn:aws:iam::{ACCOUNT}:role/{stack._physical('DrillTaskRole')}"
    to_ecs = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    owners = [owner for owner, doc in stack.policy_documents()
              for s in doc["Statement"] if "iam:PassRole" in as_list(s["Action"]) and drill in as_list(s["Resource"])]
    assert owners == ["PassDrillTaskRolePolicy"]
    assert stack.resource("PassDrillTaskRolePolicy")["Roles"] == [stack._physical("BackupRole")]
    for role in GITHUB_ROLES:
        assert permits(role_statements(stack, role), "iam:PassRole", drill, to_ecs) == (role == "BackupRole"), role
    # drill.yml starts drills with the backup role.
    workflow = (REPO / ".github" / "workflows" / "drill.yml").read_text(encoding="utf-8")
    assert "vars.DB_BACKUP_ROLE_ARN" in workflow
    assert not re.search(r"vars\.DB_RESTORE(_PRODUCTION)?_ROLE_ARN", workflow)


READ_ROLE_KEY = f"arn:aws:s3:::{BUCKET}/curation/production/2026-01-01_00-00-00"


def test_read_role_lists_and_reads_only_manifests_and_records(stack: Stack) -> None:
    statements = role_statements(stack, "ReadRole")
    assert permits(statements, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}")
    for suffix in (".dump.json", ".dump.verify.json", ".dump.drill.json", ".dump.pin.json", ".dump.ack.json"):
        assert permits(statements, "s3:GetObject", READ_ROLE_KEY + suffix), suffix
        assert not permits(statements, "s3:GetObject", f"arn:aws:s3:::other-bucket/x{suffix}"), suffix
    # Never the database's contents: not the dump, not the globals file (role names).
    for suffix in (".dump", ".globals.sql"):
        assert not permits(statements, "s3:GetObject", READ_ROLE_KEY + suffix), suffix
    assert not permits(statements, "s3:ListBucket", "arn:aws:s3:::other-bucket")


def test_read_role_writes_tags_and_starts_nothing(stack: Stack) -> None:
    statements = role_statements(stack, "ReadRole")
    assert all(s["Effect"] == "Allow" for s in statements)
    actions = {a for s in statements for a in as_list(s["Action"])}
    expected = {"s3:ListBucket", "s3:GetObject"} | ({"kms:Decrypt"} if stack.params["KmsKeyArn"] else set())
    assert actions == expected
    kms = [s for s in statements if any(a.startswith("kms:") for a in as_list(s["Action"]))]
    assert [as_list(s["Resource"]) for s in kms] == ([[KMS_KEY]] if stack.params["KmsKeyArn"] else [])
    key = READ_ROLE_KEY + ".dump.json"
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:PutObjectTagging", "s3:GetObjectTagging",
                   "s3:AbortMultipartUpload", "s3:PutObjectAcl", *DESTRUCTIVE):
        assert not permits(statements, action, key), action
    for action, resource in [
        ("ecs:RunTask", f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/db-backup:1"),
        ("ecs:StopTask", f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/db-backup/abc"),
        ("ssm:GetParameter", parameter_arn("/curation/production/db/backup/password")),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{stack._physical('TaskRole')}"),
        ("logs:GetLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/ecs/db-backup:*"),
        ("s3:PutLifecycleConfiguration", f"arn:aws:s3:::{BUCKET}"),
    ]:
        assert not permits(statements, action, resource), action
    # No managed policy (the control plane's, a PassRole policy) is attached to it.
    physical = stack._physical("ReadRole")
    assert not [n for n, r in stack.resources().items() if physical in r.get("Roles", [])]


def test_read_role_decrypts_with_the_bucket_key_only_through_s3(stack: Stack) -> None:
    statements = role_statements(stack, "ReadRole")
    through_s3 = {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}
    if not stack.params["KmsKeyArn"]:
        assert not permits(statements, "kms:Decrypt", KMS_KEY, through_s3)
        return
    assert permits(statements, "kms:Decrypt", KMS_KEY, through_s3)
    # Called directly, or through another service, the key decrypts nothing for this role.
    assert not permits(statements, "kms:Decrypt", KMS_KEY)
    assert not permits(statements, "kms:Decrypt", KMS_KEY, {"kms:ViaService": f"ssm.{REGION}.amazonaws.com"})
    assert not permits(statements, "kms:Decrypt", KMS_KEY, {"kms:ViaService": "s3.eu-west-1.amazonaws.com"})


def test_read_role_trusts_what_the_backup_role_trusts(stack: Stack) -> None:
    # The jobs that use it (Show backups, the restore check) declare no environment: the default branch's subject.
    trust = stack.resource("ReadRole")["AssumeRolePolicyDocument"]
    assert trust == stack.resource("BackupRole")["AssumeRolePolicyDocument"]
    for name, subject in SUBJECTS.items():
        assert can_assume(stack, "ReadRole", subject) == (name == "main"), name


def test_read_role_allows_the_session_the_action_asks_it_for(stack: Stack) -> None:
    action = yaml.safe_load((REPO / "actions" / "db-backup" / "action.yml").read_text(encoding="utf-8"))
    steps = [s for s in action["runs"]["steps"] if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")]
    # The read-only commands assume their role in a step of their own, with a short session.
    (brief,) = [s for s in steps if "check-restore" in str(s.get("if", ""))]
    assert int(brief["with"]["role-duration-seconds"]) <= int(stack.resource("ReadRole").get("MaxSessionDuration", 3600))


def test_read_role_output_names_its_repository_variable_and_the_docs_set_it(template: dict[str, Any]) -> None:
    output = template["Outputs"]["ReadRoleArn"]
    assert "DB_BACKUP_READ_ROLE_ARN" in output["Description"].split()
    assert output["Value"] == {"Fn::GetAtt": ["ReadRole", "Arn"]}
    doc = (REPO / "docs" / "workflows.md").read_text(encoding="utf-8")
    assert re.search(r"gh variable set DB_BACKUP_READ_ROLE_ARN\b", doc)
    assert "ReadRoleArn" in doc
    workflows = REPO / ".github" / "workflows"
    for name in ("backups.yml", "restore.yml"):
        assert "vars.DB_BACKUP_READ_ROLE_ARN" in (workflows / name).read_text(encoding="utf-8"), name


# The IAM action and resource each S3 request needs (what the read-only commands may send).
_S3_REQUESTS = {
    "ListObjectsV2": ("s3:ListBucket", lambda p: f"arn:aws:s3:::{p['Bucket']}"),
    "GetObject": ("s3:GetObject", lambda p: f"arn:aws:s3:::{p['Bucket']}/{p['Key']}"),
    "HeadObject": ("s3:GetObject", lambda p: f"arn:aws:s3:::{p['Bucket']}/{p['Key']}"),
    "GetObjectTagging": ("s3:GetObjectTagging", lambda p: f"arn:aws:s3:::{p['Bucket']}/{p['Key']}"),
    "GetBucketLifecycleConfiguration": ("s3:GetLifecycleConfiguration", lambda p: f"arn:aws:s3:::{p['Bucket']}"),
}


def test_read_role_is_enough_for_list_history_and_status(
    aws: Any, template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Every S3 request `list`, `history` and `status` send is one the read-only role may make."""
    from datetime import UTC, datetime

    from botocore.client import BaseClient

    from runner.catalog import make_id
    from runner.records import VerifyRecord, record_key, to_json
    from runner.stores import open_store
    from tests.helpers.backups import sample_manifest
    from tests.helpers.cli import run_main
    from tests.helpers.targets import write_targets_file

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    store = open_store(f"s3://{BUCKET}", lambda: s3)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    key = store.key("curation", "production", make_id(when))
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 1234)
    store.put_manifest(sample_manifest(key, created_at=when, size=1234))
    store.put_text(record_key(key, "verify"), to_json(VerifyRecord(
        backup_id=make_id(when), checked_at=when, ok=True, problem=None, checks=("sha256",), duration_s=1.0)))
    damaged = store.key("curation", "production", make_id(datetime(2026, 1, 2, tzinfo=UTC)))
    s3.put_object(Bucket=BUCKET, Key=damaged + ".json", Body=b"{}")  # a manifest without its dump
    targets = write_targets_file(tmp_path / "targets.yaml", [f"storage: s3://{BUCKET}", f"region: {REGION}"],
                                 ["- {identifier: curation, env: production, schedule: nightly}"])
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(targets))

    sent: list[tuple[str, dict[str, Any]]] = []
    original = BaseClient._make_api_call

    def recording(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if client.meta.service_model.service_name == "s3":
            sent.append((operation, dict(params)))
        return original(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recording)
    for argv in (["list", "curation", "production", "--json"], ["history", "curation", "production", "--json"],
                 ["status", "--json", "--max-age", "100000d"]):
        done = run_main(argv, capsys)
        assert done.code == 0, (argv, done.output)
        assert make_id(when) in done.out, (argv, done.out)

    statements = role_statements(Stack(template, BASE_PARAMS), "ReadRole")
    assert {operation for operation, _ in sent} >= {"ListObjectsV2", "GetObject"}
    for operation, params in sent:
        assert operation in _S3_REQUESTS, f"{operation}: not a request the read-only commands are known to send"
        action, resource = _S3_REQUESTS[operation]
        assert permits(statements, action, resource(params)), (operation, params.get("Key"))


def test_image_push_role_pushes_only_to_its_repository(stack: Stack) -> None:
    repo_arn = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/db-backup"
    for stmt in stack.statements("ImagePushRole"):
        if as_list(stmt["Action"]) != ["ecr:GetAuthorizationToken"]:
            assert stmt["Resource"] == repo_arn
            assert all(a.startswith("ecr:") for a in as_list(stmt["Action"]))
    pushes = {a for s in stack.statements("ImagePushRole") for a in as_list(s["Action"])}
    assert {"ecr:PutImage", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload"} <= pushes


def test_task_roles_are_assumable_only_by_ecs_tasks(stack: Stack) -> None:
    for role in ("TaskRole", "NonProductionTaskRole", "DrillTaskRole", "TaskExecutionRole"):
        (stmt,) = stack.resource(role)["AssumeRolePolicyDocument"]["Statement"]
        assert stmt["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert stmt["Action"] == "sts:AssumeRole"
    for role in ("TaskRole", "NonProductionTaskRole", "DrillTaskRole"):
        (stmt,) = stack.resource(role)["AssumeRolePolicyDocument"]["Statement"]
        assert stmt["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_execution_role_writes_only_this_log_group_and_pulls_only_this_repository(stack: Stack) -> None:
    for stmt in stack.statements("TaskExecutionRole"):
        actions = as_list(stmt["Action"])
        if any(a.startswith("logs:") for a in actions):
            assert stmt["Resource"] == f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/ecs/db-backup:*"
        elif actions != ["ecr:GetAuthorizationToken"]:
            assert stmt["Resource"] == f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/db-backup"


def test_runner_roles_allow_the_session_length_the_action_requests(stack: Stack) -> None:
    # STS refuses a longer session than the role's maximum, and the action keeps its
    # credentials for as long as it follows a (possibly hours-long) task.
    action = yaml.safe_load((REPO / "actions" / "db-backup" / "action.yml").read_text(encoding="utf-8"))
    requested = [
        int(step["with"].get("role-duration-seconds", 3600))
        for step in action["runs"]["steps"]
        if str(step.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")
    ]
    assert requested
    for role in ("BackupRole", "RestoreRole", "RestoreProductionRole"):
        assert int(stack.resource(role).get("MaxSessionDuration", 3600)) >= max(requested), role


# --------------------------------------------------------------------------- network, ECS, ECR


def test_security_group_allows_no_ingress_and_only_https_and_database_egress(stack: Stack) -> None:
    group = stack.resource("TaskSecurityGroup")
    assert "SecurityGroupIngress" not in group
    ports = {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["SecurityGroupEgress"]}
    assert ports == {("tcp", 443, 443), ("tcp", "5432", "5432")}
    ingress = [r for r in stack.resources().values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert ingress == []


def test_task_definition_is_fargate_with_the_runner_default_names(stack: Stack) -> None:
    task = stack.resource("TaskDefinition")
    assert task["Family"] == "db-backup"
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    assert task["EphemeralStorage"] == {"SizeInGiB": "50"}
    (container,) = task["ContainerDefinitions"]
    assert container["Name"] == "db-backup"
    assert container["Memory"] == task["Memory"]
    assert container["LogConfiguration"] == {
        "LogDriver": "awslogs",
        "Options": {"awslogs-group": "/ecs/db-backup", "awslogs-region": REGION, "awslogs-stream-prefix": "ecs"},
    }
    expected_image = stack.params["ImageUri"] or f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/db-backup:latest"
    assert container["Image"] == expected_image
    assert stack.resource("Cluster")["ClusterName"] == "db-backup"
    assert stack.resource("LogGroup")["LogGroupName"] == "/ecs/db-backup"
    assert stack.resource("LogGroup")["RetentionInDays"]


def test_ecr_repository_scans_on_push_and_expires_old_images(stack: Stack) -> None:
    repo = stack.resource("EcrRepository")
    assert repo["RepositoryName"] == "db-backup"
    assert repo["ImageScanningConfiguration"] == {"ScanOnPush": True}
    rules = json.loads(repo["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    assert {r["selection"]["tagStatus"] for r in rules} == {"untagged", "any"}
    assert all(r["action"] == {"type": "expire"} for r in rules)


REPOSITORY_VARIABLES = {
    "AwsRegion": "AWS_REGION",
    "BackupRoleArn": "DB_BACKUP_ROLE_ARN",
    "RestoreRoleArn": "DB_RESTORE_ROLE_ARN",
    "RestoreProductionRoleArn": "DB_RESTORE_PRODUCTION_ROLE_ARN",
    "ReadRoleArn": "DB_BACKUP_READ_ROLE_ARN",
    "ImagePushRoleArn": "DB_BACKUP_IMAGE_PUSH_ROLE_ARN",
    "EcrRepository": "ECR_REPOSITORY",
}
TARGETS_OUTPUTS = (
    "Storage",
    "Region",
    "EcsCluster",
    "TaskDefinition",
    "Container",
    "Subnets",
    "SecurityGroups",
    "LogGroup",
    "TargetsDefaults",
)


def test_outputs_name_the_repository_variables_and_setup_doc_sets_them(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    for key in TARGETS_OUTPUTS:
        assert key in outputs, key
    doc = SETUP_DOC.read_text(encoding="utf-8")
    for key, variable in REPOSITORY_VARIABLES.items():
        assert variable in outputs[key]["Description"].split(), key
        assert re.search(rf"gh variable set {variable}\b", doc), variable
        assert key in doc, key


def test_setup_doc_describes_every_parameter(template: dict[str, Any]) -> None:
    doc = SETUP_DOC.read_text(encoding="utf-8")
    table = [line for line in doc.splitlines() if line.startswith("| `")]
    for name in template["Parameters"]:
        assert any(f"`{name}`" in line for line in table), name
    # The removed single-expiry parameter appears only where the doc explains the upgrade from it.
    before_upgrade, upgrade = doc.split("### Upgrading a stack that had `RetentionDays`", 1)
    after_upgrade = upgrade.split("\n### ", 1)[1]
    for part in (before_upgrade, after_upgrade):
        assert not re.search(r"(?<![A-Za-z])RetentionDays\b", part)


def _operator_policy() -> list[dict[str, Any]]:
    doc = SETUP_DOC.read_text(encoding="utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, re.S) if "s3:PutObjectTagging" in b]
    assert len(blocks) == 1, "docs/setup.md should show one operator policy for pins and retention"
    return list(blocks[0]["Statement"])


def test_setup_doc_operator_policy_can_pin_and_view_retention_and_nothing_more() -> None:
    statements = _operator_policy()
    bucket, prefix = f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/curation/production/2026-03-01_02-00-07"
    for action, resource in [
        ("s3:ListBucket", bucket),
        ("s3:GetLifecycleConfiguration", bucket),
        ("s3:GetObject", prefix + ".dump.json"),
        ("s3:GetObjectTagging", prefix + ".dump"),
        ("s3:PutObjectTagging", prefix + ".dump"),
        ("s3:PutObjectTagging", prefix + ".globals.sql"),
        ("s3:PutObject", prefix + ".dump.pin.json"),
    ]:
        assert permits(statements, action, resource), (action, resource)
    # The pin record is all it writes: no dump, manifest or other record can be overwritten.
    for suffix in (".dump", ".dump.json", ".dump.drill.json", ".globals.sql"):
        assert not permits(statements, "s3:PutObject", prefix + suffix), suffix
    for action in DESTRUCTIVE:
        for resource in (bucket, prefix + ".dump"):
            assert not permits(statements, action, resource), action
    # The doc says the first two statements alone only view retention.
    view_only = statements[:2]
    assert permits(view_only, "s3:GetLifecycleConfiguration", bucket)
    assert permits(view_only, "s3:GetObjectTagging", prefix + ".dump")
    assert not any(a.startswith(("s3:Put", "s3:Delete")) for s in view_only for a in as_list(s["Action"]))


def _as_s3_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """One CloudFormation lifecycle rule in the shape of the S3 API, as CloudFormation sends it."""
    out: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"]}
    tags = rule.get("TagFilters", [])
    out["Filter"] = {"Tag": tags[0]} if len(tags) == 1 else {"Prefix": ""}
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "ExpiredObjectDeleteMarker" in rule:
        out["Expiration"] = {"ExpiredObjectDeleteMarker": rule["ExpiredObjectDeleteMarker"]}
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_db_backup_reads_the_stack_rules_as_the_retention_parameters(aws: Any, template: dict[str, Any], scenario: str) -> None:
    # moto's CloudFormation does not apply lifecycle rules, so the resolved rules are put by hand.
    from runner.retention import TIER_TAG as RUNNER_TIER_TAG
    from runner.retention import Tier
    from runner.stores.s3_tags import tier_rules

    assert RUNNER_TIER_TAG == TIER_TAG
    stack = Stack(template, SCENARIOS[scenario])
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": [_as_s3_rule(r) for r in lifecycle_rules(stack)]},
    )
    expected = {Tier(tier): int(stack.params[name]) for tier, name in TIER_PARAMETERS.items() if stack.params[name] != "0"}
    assert tier_rules(s3, BUCKET, "curation/production/") == expected


# --------------------------------------------------------------------------- deploy on moto


@pytest.fixture
def cloudformation_novalue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto drop `AWS::NoValue` list items, as CloudFormation does.

    moto resolves `!If [Cond, X, !Ref AWS::NoValue]` inside a list to a null element, which its
    IAM validator then rejects; CloudFormation removes the element. The moto server runs in
    this process, so patching its resolver here is enough.
    """
    from moto.cloudformation import parsing

    original = parsing.clean_json

    def clean_json(resource_json: Any, resources_map: Any) -> Any:
        cleaned = original(resource_json, resources_map)
        if isinstance(cleaned, list):
            return [item for item in cleaned if item is not None]
        return cleaned

    monkeypatch.setattr(parsing, "clean_json", clean_json)


def _wait_for_stack(cf: Any, name: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stack = cf.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            return stack
        time.sleep(0.1)


def _policy_document(raw: Any) -> dict[str, Any]:
    # moto returns inline role policies as the repr of a dict, real IAM as (decoded) JSON.
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return ast.literal_eval(raw)


@pytest.mark.parametrize("scenario", ["defaults", "kms-and-many-prefixes"])
@pytest.mark.usefixtures("cloudformation_novalue")
# moto's CloudFormation skips AWS::S3::BucketPolicy (checked from the template above).
@pytest.mark.filterwarnings("ignore:Tried to parse AWS.{2}S3.{2}BucketPolicy:UserWarning")
def test_template_deploys_on_moto_with_the_runner_default_names(aws: Any, scenario: str) -> None:
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    iam = boto3.client("iam")
    # moto's CloudFormation cannot create AWS::IAM::OIDCProvider, so reuse one made by the IAM
    # API; the create path is covered by test_oidc_provider_is_created_unless_an_existing_one_is_given.
    provider = iam.create_open_id_connect_provider(
        Url="https://token.actions.githubusercontent.com",
        ClientIDList=["sts.amazonaws.com"],
        ThumbprintList=["6938fd4d98bab03faadb97b34396831e3780aea1"],
    )["OpenIDConnectProviderArn"]
    params = {
        "GitHubOrg": ORG,
        "GitHubRepo": REPO_NAME,
        "VpcId": vpc,
        "SubnetIds": subnet,
        "BucketName": BUCKET,
        "OidcProviderArn": provider,
        "SsmParameterPrefixes": "/curation,/chipmunk,/mati",
    }
    prefixes = ["/curation", "/chipmunk", "/mati"]
    key_arn = None
    if scenario == "kms-and-many-prefixes":
        key_arn = boto3.client("kms").create_key(Description="db-backup test")["KeyMetadata"]["Arn"]
        prefixes = [f"/db{i}" for i in range(11)]
        params |= {"KmsKeyArn": key_arn, "SsmParameterPrefixes": ",".join(prefixes), "WeeklyRetentionDays": "0",
                   "YearlyRetentionDays": "1098"}

    cf = boto3.client("cloudformation")
    cf.create_stack(
        StackName="db-backup",
        TemplateBody=TEMPLATE.read_text(encoding="utf-8"),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = _wait_for_stack(cf, "db-backup")
    events = [
        (e["LogicalResourceId"], e["ResourceStatus"], e.get("ResourceStatusReason"))
        for e in cf.describe_stack_events(StackName="db-backup")["StackEvents"]
        if "FAILED" in e["ResourceStatus"]
    ]
    assert stack["StackStatus"] == "CREATE_COMPLETE", (stack.get("StackStatusReason"), events)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}

    # The names targets.yaml and the runner's defaults rely on.
    ecs = boto3.client("ecs")
    task = ecs.describe_task_definition(taskDefinition="db-backup")["taskDefinition"]
    assert task["family"] == "db-backup"
    (container,) = task["containerDefinitions"]
    assert container["name"] == "db-backup"
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert container["logConfiguration"]["options"] == {
        "awslogs-group": "/ecs/db-backup",
        "awslogs-region": REGION,
        "awslogs-stream-prefix": "ecs",
    }
    (cluster,) = ecs.describe_clusters(clusters=["db-backup"])["clusters"]
    assert cluster["clusterName"] == "db-backup"
    assert cluster["status"] == "ACTIVE"
    groups = boto3.client("logs").describe_log_groups(logGroupNamePrefix="/ecs/db-backup")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [("/ecs/db-backup", 90)]
    assert boto3.client("ecr").describe_repositories(repositoryNames=["db-backup"])["repositories"]

    # Outputs fill targets.yaml defaults and the repository variables.
    group_id = outputs["SecurityGroups"]
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert group["VpcId"] == vpc
    assert {
        k: outputs[k]
        for k in ("Storage", "Region", "AwsRegion", "EcsCluster", "TaskDefinition", "Container", "Subnets", "LogGroup", "EcrRepository")
    } == {
        "Storage": f"s3://{BUCKET}",
        "Region": REGION,
        "AwsRegion": REGION,
        "EcsCluster": "db-backup",
        "TaskDefinition": "db-backup",
        "Container": "db-backup",
        "Subnets": subnet,
        "LogGroup": "/ecs/db-backup",
        "EcrRepository": "db-backup",
    }
    defaults = yaml.safe_load(outputs["TargetsDefaults"])["defaults"]
    assert defaults == {
        "storage": f"s3://{BUCKET}",
        "region": REGION,
        "ecs": {
            "cluster": "db-backup",
            "task_definition": "db-backup",
            "container": "db-backup",
            "subnets": [subnet],
            "security_groups": [group_id],
            "assign_public_ip": False,
            "log_group": "/ecs/db-backup",
            "nonproduction_task_role_arn": outputs["NonProductionTaskRoleArn"],
            "drill_task_role_arn": outputs["DrillTaskRoleArn"],
        },
    }
    roles = {}
    for key in ("BackupRoleArn", "RestoreRoleArn", "RestoreProductionRoleArn", "ImagePushRoleArn", "TaskRoleArn",
                "NonProductionTaskRoleArn", "DrillTaskRoleArn"):
        roles[key] = iam.get_role(RoleName=outputs[key].rsplit("/", 1)[1])["Role"]
        assert roles[key]["Arn"] == outputs[key]
    exec_role = [r["Arn"] for r in iam.list_roles()["Roles"] if "TaskExecutionRole" in r["RoleName"]]
    task_role = {outputs["TaskRoleArn"], *exec_role}
    pass_policies: dict[str, dict[str, set[str]]] = {
        "BackupRoleArn": {"PassTaskRolePolicy": task_role,
                          "PassDrillTaskRolePolicy": {outputs["DrillTaskRoleArn"], *exec_role}},
        "RestoreProductionRoleArn": {"PassTaskRolePolicy": task_role},
        "RestoreRoleArn": {"PassNonProductionTaskRolePolicy": {outputs["NonProductionTaskRoleArn"], *exec_role}},
    }
    for key, expected in pass_policies.items():
        attached = iam.list_attached_role_policies(RoleName=roles[key]["RoleName"])["AttachedPolicies"]
        names = [p["PolicyName"] for p in attached]
        assert len(names) == 1 + len(expected) and sum("ControlPlanePolicy" in n for n in names) == 1, names
        for pass_policy, passable in expected.items():
            (passing,) = [p for p in attached if f"-{pass_policy}-" in f"-{p['PolicyName']}-"]
            version = iam.get_policy(PolicyArn=passing["PolicyArn"])["Policy"]["DefaultVersionId"]
            doc = _policy_document(
                iam.get_policy_version(PolicyArn=passing["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"])
            (stmt,) = doc["Statement"]
            assert stmt["Action"] == "iam:PassRole" and set(as_list(stmt["Resource"])) == passable, (key, stmt)
    assert iam.list_attached_role_policies(RoleName=roles["ImagePushRoleArn"]["RoleName"])["AttachedPolicies"] == []
    for key in ("BackupRoleArn", "RestoreRoleArn", "RestoreProductionRoleArn", "ImagePushRoleArn"):
        trust = _policy_document(roles[key]["AssumeRolePolicyDocument"])
        assert {s["Principal"]["Federated"] for s in trust["Statement"]} == {provider}

    # The SSM slots resolved by a real CloudFormation implementation, not only our evaluator.
    task_role = roles["TaskRoleArn"]["RoleName"]
    ssm_doc = _policy_document(iam.get_role_policy(RoleName=task_role, PolicyName="ssm-parameters")["PolicyDocument"])
    (ssm_stmt,) = [s for s in ssm_doc["Statement"] if s["Sid"] == "ReadDatabaseParameters"]
    assert as_list(ssm_stmt["Resource"]) == [ssm_arn(p) for p in prefixes[:10]]
    nonprod_role = roles["NonProductionTaskRoleArn"]["RoleName"]
    nonprod_doc = _policy_document(iam.get_role_policy(RoleName=nonprod_role, PolicyName="ssm-parameters")["PolicyDocument"])
    statements = {s["Sid"]: s for s in nonprod_doc["Statement"]}
    assert as_list(statements["ReadDatabaseParameters"]["Resource"]) == [ssm_arn(p) for p in prefixes[:10]]
    deny = statements["DenyProductionParameters"]
    assert deny["Effect"] == "Deny" and as_list(deny["Resource"]) == [parameter_arn("/*/production/*")]

    bucket_doc = _policy_document(iam.get_role_policy(RoleName=task_role, PolicyName="backup-bucket")["PolicyDocument"])
    (tagging,) = [s for s in bucket_doc["Statement"] if s["Sid"] == "TagObjects"]
    assert sorted(as_list(tagging["Action"])) == ["s3:GetObjectTagging", "s3:PutObjectTagging"]
    assert as_list(tagging["Resource"]) == [f"arn:aws:s3:::{BUCKET}/*"]

    # The drill role as deployed: one bucket policy, no SSM, records the only writes.
    drill_role = roles["DrillTaskRoleArn"]["RoleName"]
    assert iam.list_role_policies(RoleName=drill_role)["PolicyNames"] == ["backup-bucket-drill"]
    assert iam.list_attached_role_policies(RoleName=drill_role)["AttachedPolicies"] == []
    drill_doc = _policy_document(iam.get_role_policy(RoleName=drill_role, PolicyName="backup-bucket-drill")["PolicyDocument"])
    drill_statements = {s["Sid"]: s for s in drill_doc["Statement"]}
    assert as_list(drill_statements["WriteDrillRecords"]["Resource"]) == [f"arn:aws:s3:::{BUCKET}/*.drill.json"]
    assert drill_statements["KeepLongLivedTiers"]["Effect"] == "Deny"
    assert not [a for s in drill_doc["Statement"] for a in as_list(s["Action"]) if a.startswith("ssm:")]
    assert ("UseBucketKey" in drill_statements) == (key_arn is not None)

    s3 = boto3.client("s3")
    encryption = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]
    (rule,) = encryption["Rules"]
    if key_arn:
        assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
        assert container["image"] == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/db-backup:latest"
        assert [s["Resource"] for s in bucket_doc["Statement"] if s["Sid"] == "UseBucketKey"] == [key_arn]
    else:
        assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
