#!/usr/bin/env bash
# Subscribe the Function App to the storage account's blob events (Event Grid), with dead-lettering.
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
# It waits for the system keys, then deploys infra/subscriptions.bicep (deployment name
# event-subscriptions), which creates or updates, with dead-lettering to the dead-letter container
# through the system topic's identity:
#   <container>-blob-created  Microsoft.Storage.BlobCreated -> blob trigger  index_image
#   <container>-blob-deleted  Microsoft.Storage.BlobDeleted -> Event Grid trigger remove_deleted_image
# both filtered to subjects beginning with /blobServices/default/containers/<container>/.
# Re-running is safe (create-or-update) and picks up rotated keys.
set -euo pipefail

BLOB_FUNCTION="index_image"            # blob trigger (fixed by function_app.py)
DELETE_FUNCTION="remove_deleted_image" # Event Grid trigger (fixed by function_app.py)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
template="$here/../subscriptions.bicep"

usage() {
  cat <<'EOF'
Usage: post-deploy.sh [-g RESOURCE_GROUP] [-d DEPLOYMENT_NAME]

  -g  resource group of the deployment (default: $AZURE_RESOURCE_GROUP, set by azd)
  -d  name of the `az deployment group` deployment to read outputs from when they are not in the
      environment (default: the latest deployment in the group that has the outputs)

Requires the Azure CLI (`az login` done, with Bicep) and that the function code is already deployed.
EOF
}

# shellcheck source=lib.sh
source "$here/lib.sh"
parse_args post-deploy "$@"

app_name="$(setting AZURE_FUNCTION_APP_NAME)"
container="$(setting IMAGES_CONTAINER)"
dead_letter_container="$(setting DEADLETTER_CONTAINER)"
storage_account="$(setting AZURE_STORAGE_ACCOUNT_NAME)"
system_topic="$(setting EVENTGRID_SYSTEM_TOPIC_NAME)"

# Flex Consumption apps may get a unique default host name, so ask for it instead of assuming
# <app>.azurewebsites.net.
host="$(az functionapp show -g "$resource_group" -n "$app_name" --query defaultHostName -o tsv)"
echo "post-deploy: app $app_name ($host), container $container, system topic $system_topic"

# The system keys appear once the host has started with the extensions loaded: wake the app with
# its anonymous health endpoint, then poll. The keys themselves are read by the template (listKeys).
wait_for_system_key() {
  local name="$1" key="" attempt
  for attempt in $(seq 1 30); do
    curl -fsS -o /dev/null --max-time 60 "https://$host/api/health" 2>/dev/null || true
    key="$(az functionapp keys list -g "$resource_group" -n "$app_name" \
      --query "systemKeys.$name" -o tsv 2>/dev/null || true)"
    if [[ -n "$key" && "$key" != "None" ]]; then
      return 0
    fi
    echo "post-deploy: waiting for system key $name (attempt $attempt/30)" >&2
    sleep 10
  done
  echo "post-deploy: system key $name not found: is the code deployed (azd deploy / func azure functionapp publish $app_name)?" >&2
  return 1
}

wait_for_system_key blobs_extension
wait_for_system_key eventgrid_extension

# Event Grid validates a webhook when a subscription is created; a cold app can miss the first
# handshake, so retry a few times.
for attempt in 1 2 3 4 5; do
  if az deployment group create \
    --resource-group "$resource_group" \
    --name event-subscriptions \
    --template-file "$template" \
    --parameters \
      appName="$app_name" \
      systemTopicName="$system_topic" \
      storageAccountName="$storage_account" \
      imagesContainerName="$container" \
      deadLetterContainerName="$dead_letter_container" \
      blobFunctionName="$BLOB_FUNCTION" \
      deleteFunctionName="$DELETE_FUNCTION" \
    --output none; then
    echo "post-deploy: subscriptions $container-blob-created and $container-blob-deleted are in place" \
      "(dead letters go to container $dead_letter_container)"
    exit 0
  fi
  echo "post-deploy: deploying the subscriptions failed (attempt $attempt/5), retrying" >&2
  sleep 15
done
exit 1
