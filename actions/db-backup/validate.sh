#!/usr/bin/env bash
# Validate the action's inputs before anything else runs. GitHub (and act) do not check that a
# workflow_dispatch value is one of its dropdown options, so a request from the API or `gh` may
# carry anything. Inputs arrive only through the environment (IN_*), never through `${{ }}`.
set -euo pipefail

name_re='^[a-z0-9][a-z0-9_-]{0,62}$'
backup_re='^(latest|[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{2}-[0-9]{2}-[0-9]{2}(_[0-9]+)?)$'
role_re='^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$'
region_re='^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$'

problems=()

# A value safe to print inside a workflow command: no newlines, no %, nothing exotic, short.
shown() {
  local value=${1//[^A-Za-z0-9 _.,;:\/@+=-]/?}
  if ((${#value} > 80)); then value="${value:0:80}..."; fi
  printf '%s' "$value"
}

check() {  # check INPUT VALUE REGEX WHAT
  if [[ ! $2 =~ $3 ]]; then
    problems+=("input \"$1\" is not $4 (got \"$(shown "$2")\"); it must match $3")
  fi
}

required=()
case "$IN_COMMAND" in
  backup) required=(identifier env role-to-assume aws-region) ;;
  restore) required=(identifier from to backup role-to-assume aws-region) ;;
  rollback) required=(identifier to role-to-assume aws-region) ;;
  drill) required=(identifier env backup role-to-assume aws-region) ;;
  check) required=(identifier env) ;;
  check-restore) required=(identifier from to backup) ;;
  check-rollback) required=(identifier to) ;;
  setup) if [[ -n $IN_IDENTIFIER ]]; then required=(env); fi ;;
  *) problems+=("input \"command\" must be backup, restore, rollback, drill, check, check-restore, check-rollback or setup (got \"$(shown "$IN_COMMAND")\")") ;;
esac

value_of() {
  case "$1" in
    identifier) printf '%s' "$IN_IDENTIFIER" ;;
    env) printf '%s' "$IN_ENV" ;;
    from) printf '%s' "$IN_FROM" ;;
    to) printf '%s' "$IN_TO" ;;
    backup) printf '%s' "$IN_BACKUP" ;;
    role-to-assume) printf '%s' "$IN_ROLE" ;;
    aws-region) printf '%s' "$IN_REGION" ;;
  esac
}
for input in "${required[@]}"; do
  if [[ -z "$(value_of "$input")" ]]; then
    problems+=("input \"$input\" is required for command $IN_COMMAND")
  fi
done

[[ -z $IN_IDENTIFIER ]] || check identifier "$IN_IDENTIFIER" "$name_re" "a valid identifier"
[[ -z $IN_ENV ]] || check env "$IN_ENV" "$name_re" "a valid environment name"
[[ -z $IN_FROM ]] || check from "$IN_FROM" "$name_re" "a valid environment name"
[[ -z $IN_TO ]] || check to "$IN_TO" "$name_re" "a valid environment name"
[[ -z $IN_BACKUP ]] || check backup "$IN_BACKUP" "$backup_re" "latest or a backup id"
[[ -z $IN_ROLE ]] || check role-to-assume "$IN_ROLE" "$role_re" "an IAM role ARN"
[[ -z $IN_REGION ]] || check aws-region "$IN_REGION" "$region_re" "an AWS region"
check with-roles "${IN_WITH_ROLES:-false}" '^(true|false)$' "true or false"
if [[ -n $IN_ROLE && -z $IN_REGION ]]; then
  problems+=("input \"aws-region\" is required with role-to-assume (set the repository variable AWS_REGION)")
fi
if [[ -n $IN_CONFIRM ]]; then
  if [[ $IN_COMMAND != restore && $IN_COMMAND != rollback ]]; then
    problems+=("input \"confirm\" is only for commands restore and rollback")
  elif [[ $IN_CONFIRM != "$IN_TO" ]]; then
    problems+=("input \"confirm\" must name the environment restored into or rolled back (\"$(shown "$IN_TO")\"), got \"$(shown "$IN_CONFIRM")\"")
  fi
fi
targets=${IN_TARGETS:-${DB_BACKUP_TARGETS:-targets.yaml}}
if [[ ! -f $targets ]]; then
  problems+=("targets file \"$(shown "$targets")\" not found; check out the repository first (actions/checkout) or set input targets")
fi

if ((${#problems[@]})); then
  for problem in "${problems[@]}"; do
    echo "::error title=db-backup::$problem"
  done
  {
    echo "### db-backup: request refused, nothing was started"
    for problem in "${problems[@]}"; do echo "- $problem"; done
  } >> "${GITHUB_STEP_SUMMARY:-/dev/null}"
  exit 2
fi
echo "inputs valid: command=$IN_COMMAND identifier=$IN_IDENTIFIER env=$IN_ENV from=$IN_FROM to=$IN_TO backup=$IN_BACKUP"
