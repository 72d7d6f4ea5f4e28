#!/usr/bin/env bash
# azd preprovision hook: remember the current disk size of the PostgreSQL server.
#
# Storage autogrow enlarges the disk on its own; a later deployment that asks for the original size
# would be a shrink, which the service rejects (UpsertServerManagementOperationDowngradeDiskSizeUnsupported).
# main.bicep deploys the larger of postgresStorageSizeGB and postgresCurrentStorageSizeGB; this hook fills
# the latter (azd maps AZURE_POSTGRES_CURRENT_STORAGE_GB to it in main.parameters.json).
#
# On the first provision there is no server yet (no DATABASE_HOST in the azd environment): nothing to do.
# Without azd, pass the size yourself (docs/deploy.md):
#   -p postgresCurrentStorageSizeGB=$(az resource show -g <rg> -n <server> \
#        --resource-type Microsoft.DBforPostgreSQL/flexibleServers --query properties.storage.storageSizeGB -o tsv)
set -euo pipefail

resource_group="${AZURE_RESOURCE_GROUP:-}"
host="${DATABASE_HOST:-}"
if [[ -z "$resource_group" || -z "$host" ]]; then
  echo "pre-provision: no existing PostgreSQL server recorded in this azd environment; nothing to do"
  exit 0
fi
server="${host%%.*}"

# properties.storage.storageSizeGB of Microsoft.DBforPostgreSQL/flexibleServers (the ARM resource as is).
if ! size="$(az resource show -g "$resource_group" -n "$server" \
  --resource-type Microsoft.DBforPostgreSQL/flexibleServers \
  --query properties.storage.storageSizeGB -o tsv 2>/dev/null)"; then
  echo "pre-provision: could not read the disk size of $server; if it grew, the deployment may fail" \
    "until you run: azd env set AZURE_POSTGRES_CURRENT_STORAGE_GB <size in GiB>" >&2
  exit 0
fi
if [[ "$size" =~ ^[0-9]+$ ]]; then
  azd env set AZURE_POSTGRES_CURRENT_STORAGE_GB "$size"
  echo "pre-provision: $server has $size GiB; the deployment will not ask for less"
fi
