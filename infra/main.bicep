// Serverless image similarity search: everything the app needs in one resource group.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json \
//     -p environmentName=<name> principalId=<your Entra object ID> [postgresAdminName=<your UPN>]
//   (or `azd up`, which fills the parameters file from the azd environment; see docs/deploy.md)
//
// Resources and the Microsoft Learn reference each module follows:
// - modules/monitoring.bicep       Microsoft.OperationalInsights/workspaces@2023-09-01,
//                                  Microsoft.Insights/components@2020-02-02
// - modules/storage.bicep          Microsoft.Storage/storageAccounts(/blobServices/containers)@2023-05-01
// - modules/vision.bicep           Microsoft.CognitiveServices/accounts@2024-10-01
// - modules/postgres.bicep         Microsoft.DBforPostgreSQL/flexibleServers(/firewallRules,
//                                  /configurations, /administrators)@2025-08-01
// - modules/network.bicep          Microsoft.Network/virtualNetworks, networkSecurityGroups@2024-05-01,
//                                  Microsoft.Network/privateDnsZones(/virtualNetworkLinks)@2024-06-01
// - modules/private-endpoint.bicep Microsoft.Network/privateEndpoints(/privateDnsZoneGroups)@2024-05-01
// - modules/function-app.bicep     Microsoft.Web/serverfarms@2024-04-01, Microsoft.Web/sites@2024-04-01,
//                                  Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01
// - modules/role-assignments.bicep Microsoft.Authorization/roleAssignments@2022-04-01
// - modules/events.bicep           Microsoft.EventGrid/systemTopics@2025-02-15
// Diagnostic settings (Microsoft.Insights/diagnosticSettings@2021-05-01-preview) send the logs and
// metrics of PostgreSQL, storage, Vision and Event Grid to the Log Analytics workspace.
// Each module names the reference page (https://learn.microsoft.com/azure/templates/...) in its header;
// every type, property, enum and read-only flag was checked against the generated Bicep types in
// Azure/bicep-types-az (generated/<provider>/<namespace>/<apiVersion>/types.json).
//
// After this deployment (docs/deploy.md):
// - infra/scripts/post-provision.sh (azd: postprovision hook), run as the PostgreSQL administrator,
//   creates the database and the app's unprivileged role, runs the migrations and grants the role.
// - infra/scripts/post-deploy.sh (azd: postdeploy hook) deploys infra/subscriptions.bicep, the Event
//   Grid subscriptions, whose webhook URLs carry Functions system keys that exist only once the code runs.

targetScope = 'resourceGroup'

// --- parameters -----------------------------------------------------------------------------------
// main.parameters.json maps several of them to azd environment variables (${AZURE_...}). azd
// substitutes them (an unset variable becomes ''); plain `az deployment group create -p
// infra/main.parameters.json` passes them verbatim. Either way a value that is empty or still starts
// with '$' counts as not given, which is why the mapped parameters are strings without @allowed here:
// the modules they feed validate them.

@description('Name of the environment (e.g. dev, prod); it seeds the unique resource names and the azd-env-name tag.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of every resource except the Vision account. Defaults to the resource group region.')
param location string = resourceGroup().location

@description('Region of the Azure AI Vision account; empty: the resource group region when it offers multimodal embeddings, else eastus. One of eastus, westus, westus2, francecentral, northeurope, westeurope, swedencentral, switzerlandnorth, australiaeast, southeastasia, koreacentral, japaneast. azd: AZURE_VISION_LOCATION.')
param visionLocation string = ''

@description('Azure AI Vision pricing tier.')
@allowed([
  'F0'
  'S1'
])
param visionSkuName string = 'S1'

@description('Disable Vision API keys (Entra tokens only). The app needs no key when this is true.')
param visionDisableLocalAuth bool = true

@description('Vision REST API version the app calls.')
param visionApiVersion string = '2024-02-01'

@description('Pinned multimodal embedding model version. Vectors of different versions must never be compared.')
param visionModelVersion string = '2023-04-15'

@description('Replication of the storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Blob container that holds the images.')
@minLength(3)
@maxLength(63)
param imagesContainerName string = 'images'

@description('Blob container for generated thumbnails; must differ from imagesContainerName.')
@minLength(3)
@maxLength(63)
param thumbnailsContainerName string = 'thumbnails'

@description('Blob container where Event Grid writes the events it could not deliver.')
@minLength(3)
@maxLength(63)
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('public: PostgreSQL admits Azure services (0.0.0.0 rule) and Vision its public endpoint, both Entra-only. private: the app joins a virtual network and reaches PostgreSQL and Vision through private endpoints; their public endpoints close (except to clientIpAddress). azd: AZURE_NETWORK_MODE.')
param networkMode string = 'public'

@description('Optional public IPv4 address (your workstation) let through the PostgreSQL firewall, and in the private mode through Vision\'s, for psql and the post-provision step. azd: AZURE_CLIENT_IP_ADDRESS.')
param clientIpAddress string = ''

@description('PostgreSQL major version (single-node server; an elastic cluster always runs 17).')
@allowed([
  '16'
  '17'
])
param postgresVersion string = '17'

@description('PostgreSQL compute size of a single-node server.')
param postgresSkuName string = 'Standard_B1ms'

@description('PostgreSQL compute tier matching postgresSkuName.')
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'

@description('PostgreSQL storage in GiB per node: a Premium SSD size (32, 64, 128, 256, 512, 1024, 2048, 4095, 4096, 8192, 16384, 32767).')
@allowed([
  32
  64
  128
  256
  512
  1024
  2048
  4095
  4096
  8192
  16384
  32767
])
param postgresStorageSizeGB int = 32

@description('Grow the PostgreSQL disk automatically before it fills up (ignored for an elastic cluster, which does not support it).')
param postgresStorageAutoGrow bool = true

@description('Current disk size of an existing server in GiB, so that a disk grown by autogrow is never asked to shrink; azd\'s preprovision hook sets it (AZURE_POSTGRES_CURRENT_STORAGE_GB). Empty: new server.')
param postgresCurrentStorageSizeGB string = ''

@description('Deploy an elastic cluster (Citus, PostgreSQL 17, database postgres) instead of a single-node server.')
param postgresElasticCluster bool = false

@description('Number of nodes of the elastic cluster (used when postgresElasticCluster is true).')
@minValue(2)
@maxValue(20)
param postgresClusterSize int = 2

@description('Compute size of each elastic cluster node (used when postgresElasticCluster is true).')
param postgresClusterSkuName string = 'Standard_D2ds_v5'

@description('Compute tier of postgresClusterSkuName.')
@allowed([
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresClusterSkuTier string = 'GeneralPurpose'

@description('Object ID of the PostgreSQL Microsoft Entra administrator, usually a group of the people who run migrations. Empty: principalId (you). azd: AZURE_POSTGRES_ADMIN_OBJECT_ID.')
param postgresAdminObjectId string = ''

@description('Role name of that administrator in PostgreSQL (a user\'s UPN, a group\'s display name); logins are matched on the object ID. Empty: <environmentName>-admin. azd: AZURE_POSTGRES_ADMIN_NAME.')
param postgresAdminName string = ''

@description('User, Group or ServicePrincipal. Empty: Group when postgresAdminObjectId is given, else principalType. azd: AZURE_POSTGRES_ADMIN_TYPE.')
param postgresAdminType string = ''

@description('PostgreSQL connections the app may use in all: the server\'s user connections (Standard_B1ms: 35; see docs/deploy.md) minus room for the administrator, psql and the CLI.')
@minValue(1)
param postgresConnectionBudget int = 30

@description('Memory of each Function App instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum on-demand instances of EACH function scale group (Flex Consumption: http, blob, and every other function on its own). The database connection and Vision rate budgets are divided by groups x this.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 2

@description('Python version of the Functions runtime (Flex Consumption supports 3.10-3.12; this project needs 3.11+).')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('NCRONTAB schedule of the reconcile timer (sec min hour day month weekday).')
param reconcileSchedule string = '0 0 * * * *'

@description('Object ID of the deploying user (azd sets AZURE_PRINCIPAL_ID): default PostgreSQL administrator, and given rights to upload images and call Vision. Empty: none.')
param principalId string = ''

@description('Kind of principal principalId is: User, Group or ServicePrincipal (a CI run under a service principal). azd: AZURE_PRINCIPAL_TYPE. Empty: User.')
param principalType string = 'User'

// --- normalised inputs (see the note above the parameters) -----------------------------------------

var envName = startsWith(environmentName, '$') ? 'imagesearch' : environmentName
var userPrincipalId = startsWith(principalId, '$') ? '' : trim(principalId)
var userPrincipalType = (empty(principalType) || startsWith(principalType, '$')) ? 'User' : trim(principalType)
var clientIp = startsWith(clientIpAddress, '$') ? '' : trim(clientIpAddress)
var effectiveNetworkMode = (empty(networkMode) || startsWith(networkMode, '$')) ? 'public' : toLower(trim(networkMode))
var privateNetwork = (effectiveNetworkMode == 'private')

// The regions that offer multimodal embeddings (Image Analysis 4.0 retrieval); vision.bicep enforces it.
var visionRegions = [
  'eastus'
  'westus'
  'westus2'
  'francecentral'
  'northeurope'
  'westeurope'
  'swedencentral'
  'switzerlandnorth'
  'australiaeast'
  'southeastasia'
  'koreacentral'
  'japaneast'
]
var visionLocationGiven = startsWith(visionLocation, '$') ? '' : toLower(trim(visionLocation))
var effectiveVisionLocation = empty(visionLocationGiven) ? (contains(visionRegions, toLower(location)) ? toLower(location) : 'eastus') : visionLocationGiven

// PostgreSQL administrator: the deploying user by default, or a group (recommended for teams).
var adminObjectIdGiven = startsWith(postgresAdminObjectId, '$') ? '' : trim(postgresAdminObjectId)
var adminNameGiven = startsWith(postgresAdminName, '$') ? '' : trim(postgresAdminName)
var adminTypeGiven = startsWith(postgresAdminType, '$') ? '' : trim(postgresAdminType)
var postgresAdminId = empty(adminObjectIdGiven) ? userPrincipalId : adminObjectIdGiven
var postgresAdminRole = empty(adminNameGiven) ? '${envName}-admin' : adminNameGiven
var postgresAdminPrincipalType = empty(adminTypeGiven) ? (empty(adminObjectIdGiven) ? userPrincipalType : 'Group') : adminTypeGiven

var currentStorageGiven = startsWith(postgresCurrentStorageSizeGB, '$') ? '' : trim(postgresCurrentStorageSizeGB)
var currentStorageSizeGB = empty(currentStorageGiven) ? 0 : int(currentStorageGiven)

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(resourceGroup().id, envName))
var tags = {
  'azd-env-name': envName
}
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var storageAccountName = '${abbrs.storageStorageAccounts}${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
var databaseName = postgresElasticCluster ? 'postgres' : 'imagesearch'

// --- connection and rate budgets -------------------------------------------------------------------
// Flex Consumption scales per function group and applies maximumInstanceCount to each group
// ("Per-function scaling", learn.microsoft.com/azure/azure-functions/flex-consumption-plan; "maximum
// instance count applies to on-demand instances in each per-function scale group", event-driven-scaling).
// function_app.py has four groups: http (every HTTP route), blob (index_image), and on their own
// remove_deleted_image (Event Grid) and reconcile_timer (timer). Three of them call Vision: http
// (text and image queries), blob (one call per new image) and reconcile_timer (images it finds missing).
// tests/test_infra.py counts the groups from function_app.py, so a new trigger fails the tests until
// these numbers are updated.
var functionScaleGroups = 4
var visionScaleGroups = 3
// Connections one instance may hold (DATABASE_POOL_MAX): groups x instances x this <= the budget.
var databasePoolMax = max(1, postgresConnectionBudget / (functionScaleGroups * maximumInstanceCount))
// Each instance's share of the Vision rate limit (S1: 20 calls/s; F0: 20 calls/min), in thousandths of
// a call per second because Bicep has integers only.
var visionAccountMilliCallsPerSecond = (visionSkuName == 'F0') ? 333 : 20000
var visionShareMilli = max(1, visionAccountMilliCallsPerSecond / (visionScaleGroups * maximumInstanceCount))
var visionShare = '${visionShareMilli / 1000}.${padLeft(string(visionShareMilli % 1000), 3, '0')}'

// --- resources ------------------------------------------------------------------------------------

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    skuName: storageSkuName
    imagesContainerName: imagesContainerName
    thumbnailsContainerName: thumbnailsContainerName
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

module network 'modules/network.bicep' = if (privateNetwork) {
  name: 'network'
  params: {
    name: '${abbrs.networkVirtualNetworks}${resourceToken}'
    location: location
    tags: tags
  }
}

module vision 'modules/vision.bicep' = {
  name: 'vision'
  params: {
    name: '${abbrs.cognitiveServicesComputerVision}${resourceToken}'
    location: effectiveVisionLocation
    tags: tags
    skuName: visionSkuName
    disableLocalAuth: visionDisableLocalAuth
    networkMode: effectiveNetworkMode
    allowedIpAddress: clientIp
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  params: {
    name: '${abbrs.dBforPostgreSQLServers}${resourceToken}'
    location: location
    tags: tags
    version: postgresVersion
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    storageSizeGB: postgresStorageSizeGB
    currentStorageSizeGB: currentStorageSizeGB
    storageAutoGrow: postgresStorageAutoGrow
    elasticCluster: postgresElasticCluster
    clusterSize: postgresClusterSize
    clusterSkuName: postgresClusterSkuName
    clusterSkuTier: postgresClusterSkuTier
    networkMode: effectiveNetworkMode
    clientIpAddress: clientIp
    administratorObjectId: postgresAdminId
    administratorName: postgresAdminRole
    administratorType: postgresAdminPrincipalType
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

module postgresPrivateEndpoint 'modules/private-endpoint.bicep' = if (privateNetwork) {
  name: 'postgres-private-endpoint'
  params: {
    name: '${abbrs.networkPrivateEndpoints}${abbrs.dBforPostgreSQLServers}${resourceToken}'
    location: location
    tags: tags
    subnetId: privateNetwork ? network.outputs.privateEndpointSubnetId : ''
    targetResourceId: postgres.outputs.id
    groupId: 'postgresqlServer'
    privateDnsZoneId: privateNetwork ? network.outputs.postgresZoneId : ''
  }
}

module visionPrivateEndpoint 'modules/private-endpoint.bicep' = if (privateNetwork) {
  name: 'vision-private-endpoint'
  params: {
    name: '${abbrs.networkPrivateEndpoints}${abbrs.cognitiveServicesComputerVision}${resourceToken}'
    location: location
    tags: tags
    subnetId: privateNetwork ? network.outputs.privateEndpointSubnetId : ''
    targetResourceId: vision.outputs.id
    groupId: 'account'
    privateDnsZoneId: privateNetwork ? network.outputs.visionZoneId : ''
  }
}

// Every setting the code reads (shared/settings.py DEFAULTS), identity-based wherever a secret could be.
// - ImagesStorage__* / AzureWebJobsStorage__*: identity-based connections ("Common properties for
//   identity-based connections" in the Functions docs: __credential=managedidentity and no __clientId
//   selects the system-assigned identity). A blob trigger also needs the queue service URI, where it
//   reports poison blobs.
// - VISION_KEY is deliberately absent: the app then uses an Entra token (Cognitive Services User).
// - DATABASE_URL has no password: with DATABASE_AUTH=entra the app sends an Entra token as the
//   password, logging in as the role named after the app, which post-provision.sh creates with
//   pgaadauth_create_principal_with_oid (not an administrator). sslmode=verify-full checks the server's
//   certificate and host name against the system's trusted roots (sslrootcert=system, libpq 16+; the
//   server's chain ends at DigiCert Global Root G2 / Microsoft RSA Root CA 2017, "TLS in Azure Database
//   for PostgreSQL"). The host name stays the public one in the private mode too: the private DNS zone
//   maps it to the private endpoint, so host name verification still holds.
var appSettings = {
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
  ImagesStorage__blobServiceUri: storage.outputs.blobEndpoint
  ImagesStorage__queueServiceUri: storage.outputs.queueEndpoint
  ImagesStorage__credential: 'managedidentity'
  IMAGES_CONTAINER: imagesContainerName
  THUMBNAILS_CONTAINER: thumbnailsContainerName
  BLOB_TRIGGER_SOURCE: 'EventGrid'
  EMBEDDING_PROVIDER: 'azure-vision'
  VISION_ENDPOINT: vision.outputs.endpoint
  VISION_API_VERSION: visionApiVersion
  VISION_MODEL_VERSION: visionModelVersion
  VISION_TIMEOUT_SECONDS: '30'
  VISION_MAX_RETRY_SECONDS: '60'
  VISION_MAX_REQUESTS_PER_SECOND: visionShare
  DATABASE_URL: 'postgresql://${functionAppName}@${postgres.outputs.host}:5432/${databaseName}?sslmode=verify-full&sslrootcert=system'
  DATABASE_AUTH: 'entra'
  DATABASE_POOL_MAX: string(databasePoolMax)
  HNSW_PRECISION: 'halfvec'
  HNSW_M: '32'
  HNSW_EF_CONSTRUCTION: '128'
  HNSW_EF_SEARCH: 'auto'
  READ_LINK_MINUTES: '15'
  RECONCILE_SCHEDULE: reconcileSchedule
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  params: {
    planName: '${abbrs.webServerFarms}${resourceToken}'
    name: functionAppName
    location: location
    tags: tags
    serviceName: 'api'
    deploymentStorageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    pythonVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    appSettings: appSettings
    virtualNetworkSubnetId: privateNetwork ? network.outputs.appSubnetId : ''
  }
}

module events 'modules/events.bicep' = {
  name: 'events'
  params: {
    name: '${abbrs.eventGridSystemTopics}${resourceToken}'
    location: location
    tags: tags
    storageAccountId: storage.outputs.id
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
  }
}

module roleAssignments 'modules/role-assignments.bicep' = {
  name: 'role-assignments'
  params: {
    storageAccountName: storage.outputs.name
    imagesContainerName: storage.outputs.imagesContainerName
    thumbnailsContainerName: storage.outputs.thumbnailsContainerName
    deadLetterContainerName: storage.outputs.deadLetterContainerName
    visionAccountName: vision.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: functionApp.outputs.principalId
    eventGridPrincipalId: events.outputs.principalId
    userPrincipalId: userPrincipalId
    userPrincipalType: userPrincipalType
  }
}

// --- outputs (azd stores them in the environment; the scripts read them) --------------------------

output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_PRINCIPAL_ID string = functionApp.outputs.principalId
output SEARCH_URL string = 'https://${functionApp.outputs.defaultHostName}/api/search'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output IMAGES_CONTAINER string = storage.outputs.imagesContainerName
output THUMBNAILS_CONTAINER string = storage.outputs.thumbnailsContainerName
output DEADLETTER_CONTAINER string = storage.outputs.deadLetterContainerName
output ImagesStorage__blobServiceUri string = storage.outputs.blobEndpoint
output VISION_ENDPOINT string = vision.outputs.endpoint
output VISION_LOCATION string = effectiveVisionLocation
output VISION_API_VERSION string = visionApiVersion
output VISION_MODEL_VERSION string = visionModelVersion
output DATABASE_HOST string = postgres.outputs.host
output DATABASE_NAME string = databaseName
output DATABASE_ADMIN_NAME string = postgres.outputs.administratorName
output DATABASE_POOL_MAX string = string(databasePoolMax)
output NETWORK_MODE string = effectiveNetworkMode
output EVENTGRID_SYSTEM_TOPIC_NAME string = events.outputs.name
