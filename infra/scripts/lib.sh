# Shared by post-provision.sh and post-deploy.sh (sourced, not run): command-line options and the
# deployment outputs they read, from the environment (azd passes its outputs as environment variables)
# or, standalone, from `az deployment group show`.
# shellcheck shell=bash

resource_group="${AZURE_RESOURCE_GROUP:-}"
deployment=""
from_deployment=false

# parse_args SCRIPT_NAME "$@": -g RESOURCE_GROUP, -d DEPLOYMENT_NAME, -h.
parse_args() {
  local script="$1" opt
  shift
  OPTIND=1
  while getopts ":g:d:h" opt; do
    case "$opt" in
      g) resource_group="$OPTARG"; from_deployment=true ;;
      d) deployment="$OPTARG"; from_deployment=true ;;
      h) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  if [[ -z "$resource_group" ]]; then
    echo "$script: no resource group: pass -g <resource-group> or set AZURE_RESOURCE_GROUP" >&2
    exit 2
  fi
}

lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }  # bash 3.2 (macOS) has no ${var,,}

# Read one output of the deployment. ARM may change the case of output names, so match it
# case-insensitively.
deployment_output() {
  local wanted="$1" key
  if [[ -z "$deployment" ]]; then
    deployment="$(az deployment group list -g "$resource_group" \
      --query "sort_by([?properties.provisioningState=='Succeeded' && properties.outputs.AZURE_FUNCTION_APP_NAME], &properties.timestamp)[-1].name" \
      -o tsv)"
    if [[ -z "$deployment" ]]; then
      deployment="main"
    fi
  fi
  for key in $(az deployment group show -g "$resource_group" -n "$deployment" \
    --query "keys(properties.outputs)" -o tsv); do
    if [[ "$(lower "$key")" == "$(lower "$wanted")" ]]; then
      az deployment group show -g "$resource_group" -n "$deployment" \
        --query "properties.outputs.\"$key\".value" -o tsv
      return 0
    fi
  done
  echo "output $wanted not found in deployment $deployment of $resource_group" >&2
  return 1
}

# setting NAME: the environment variable NAME (azd), or the deployment output of that name when the
# script was given -g/-d or the variable is unset.
setting() {
  local name="$1" value="${!1:-}"
  if [[ -z "$value" || "$from_deployment" == true ]]; then
    value="$(deployment_output "$name")"
  fi
  printf '%s' "$value"
}
