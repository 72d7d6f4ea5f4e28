#!/usr/bin/env bash
# Subscribe the Function App to the storage account's blob events (Event Grid).
#
# Why a post-deploy step: on Flex Consumption the blob trigger runs with source=EventGrid, so blob
# events must be pushed to the app's webhook. The webhook URLs carry Functions *system keys*
# (blobs_extension for the blob trigger, eventgrid_extension for the Event Grid trigger), and those
# keys only exist once the code is deployed and the host has loaded the extensions. Bicep cannot
# create the subscriptions earlier, so this script runs after the code deployment:
#   - azd runs it as the postdeploy hook (azure.yaml); azd passes the deployment outputs as
#     environment variables (AZURE_RESOURCE_GROUP, AZURE_FUNCTION_APP_NAME, ...).
#   - standalone: infra/scripts/post-deploy.sh -g <resource-group> [-d <deployment-name>]
#     reads the same outputs with `az deployment group show`.
#
# Creates (or updates: `create` is create-or-update, so re-running is safe and picks up rotated keys):
#   <container>-blob-created  Microsoft.Storage.BlobCreated -> blob trigger  index_image
#   <container>-blob-deleted  Microsoft.Storage.BlobDeleted -> Event Grid trigger remove_deleted_image
# both filtered to subjects beginning with /blobServices/default/containers/<container>/.
set -euo pipefail

BLOB_FUNCTION="index_image"            # blob trigger (fixed by function_app.py)
DELETE_FUNCTION="remove_deleted_image" # Event Grid trigger (fixed by function_app.py)

usage() {
  cat <<'EOF'
Usage: post-deploy.sh [-g RESOURCE_GROUP] [-d DEPLOYMENT_NAME]

  -g  resource group of the deployment (default: $AZURE_RESOURCE_GROUP, set by azd)
  -d  name of the `az deployment group` deployment to read outputs from when they are not in the
      environment (default: the latest deployment in the group that has the outputs)

Requires the Azure CLI (`az login` done) and that the function code is already deployed.
EOF
}

resource_group="${AZURE_RESOURCE_GROUP:-}"
deployment=""
from_deployment=false
while getopts ":g:d:h" opt; do
  case "$opt" in
    g) resource_group="$OPTARG"; from_deployment=true ;;
    d) deployment="$OPTARG"; from_deployment=true ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

if [[ -z "$resource_group" ]]; then
  echo "post-deploy: no resource group: pass -g <resource-group> or set AZURE_RESOURCE_GROUP" >&2
  exit 2
fi

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
  echo "post-deploy: output $wanted not found in deployment $deployment of $resource_group" >&2
  return 1
}

setting() {
  local name="$1" value="${!1:-}"
  if [[ -z "$value" || "$from_deployment" == true ]]; then
    value="$(deployment_output "$name")"
  fi
  printf '%s' "$value"
}

app_name="$(setting AZURE_FUNCTION_APP_NAME)"
container="$(setting IMAGES_CONTAINER)"
system_topic="$(setting EVENTGRID_SYSTEM_TOPIC_NAME)"

# Flex Consumption apps may get a unique default host name, so ask for it instead of assuming
# <app>.azurewebsites.net.
host="$(az functionapp show -g "$resource_group" -n "$app_name" --query defaultHostName -o tsv)"
echo "post-deploy: app $app_name ($host), container $container, system topic $system_topic"

# The system keys appear once the host has started with the extensions loaded: wake the app with
# its anonymous health endpoint, then poll.
system_key() {
  local name="$1" key="" attempt
  for attempt in $(seq 1 30); do
    curl -fsS -o /dev/null --max-time 60 "https://$host/api/health" 2>/dev/null || true
    key="$(az functionapp keys list -g "$resource_group" -n "$app_name" \
      --query "systemKeys.$name" -o tsv 2>/dev/null || true)"
    if [[ -n "$key" && "$key" != "None" ]]; then
      printf '%s' "$key"
      return 0
    fi
    echo "post-deploy: waiting for system key $name (attempt $attempt/30)" >&2
    sleep 10
  done
  echo "post-deploy: system key $name not found: is the code deployed (azd deploy / func azure functionapp publish $app_name)?" >&2
  return 1
}

blobs_key="$(system_key blobs_extension)"
eventgrid_key="$(system_key eventgrid_extension)"

subject_prefix="/blobServices/default/containers/$container/"

# Event Grid validates a webhook when the subscription is created; a cold app can miss the first
# handshake, so retry a few times.
subscribe() {
  local name="$1" event_type="$2" endpoint="$3" attempt
  for attempt in 1 2 3 4 5; do
    if az eventgrid system-topic event-subscription create \
      --resource-group "$resource_group" \
      --system-topic-name "$system_topic" \
      --name "$name" \
      --endpoint-type webhook \
      --endpoint "$endpoint" \
      --included-event-types "$event_type" \
      --subject-begins-with "$subject_prefix" \
      --output none; then
      echo "post-deploy: subscription $name ($event_type -> $subject_prefix) is in place"
      return 0
    fi
    echo "post-deploy: creating $name failed (attempt $attempt/5), retrying" >&2
    sleep 15
  done
  return 1
}

subscribe "$container-blob-created" "Microsoft.Storage.BlobCreated" \
  "https://$host/runtime/webhooks/blobs?functionName=Host.Functions.$BLOB_FUNCTION&code=$blobs_key"
subscribe "$container-blob-deleted" "Microsoft.Storage.BlobDeleted" \
  "https://$host/runtime/webhooks/eventgrid?functionName=$DELETE_FUNCTION&code=$eventgrid_key"
