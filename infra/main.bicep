// Serverless image similarity search: everything the app needs in one resource group.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json \
//     [-p environmentName=<name> principalId=<your Entra object ID>]
//   (or `azd up`, which fills the parameters file from the azd environment; see docs/deploy.md)
//
// Resources and the Microsoft Learn reference each module follows:
// - modules/monitoring.bicep      Microsoft.OperationalInsights/workspaces@2023-09-01,
//                                 Microsoft.Insights/components@2020-02-02
// - modules/storage.bicep         Microsoft.Storage/storageAccounts(/blobServices/containers)@2023-05-01
// - modules/vision.bicep          Microsoft.CognitiveServices/accounts@2024-10-01
// - modules/postgres.bicep        Microsoft.DBforPostgreSQL/flexibleServers(/firewallRules,
//                                 /configurations, /databases)@2025-08-01
// - modules/function-app.bicep    Microsoft.Web/serverfarms@2024-04-01, Microsoft.Web/sites@2024-04-01
// - modules/postgres-admin.bicep  Microsoft.DBforPostgreSQL/flexibleServers/administrators@2025-08-01
// - modules/role-assignments.bicep Microsoft.Authorization/roleAssignments@2022-04-01
// - modules/events.bicep          Microsoft.EventGrid/systemTopics@2025-02-15
// Each module names the reference page (https://learn.microsoft.com/azure/templates/...) in its header.
//
// The Event Grid subscriptions are created after the code is deployed, by
// infra/scripts/post-deploy.sh (azd runs it as the postdeploy hook): their webhook URLs carry
// Functions system keys that do not exist before then.

targetScope = 'resourceGroup'

// --- parameters -----------------------------------------------------------------------------------

@description('Name of the environment (e.g. dev, prod); it seeds the unique resource names and the azd-env-name tag.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Region of every resource except the Vision account. Defaults to the resource group region.')
param location string = resourceGroup().location

@description('Region of the Azure AI Vision account: one of the regions that offer multimodal embeddings.')
@allowed([
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
])
param visionLocation string = location

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

@description('PostgreSQL storage in GiB (per node).')
@minValue(32)
param postgresStorageSizeGB int = 32

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

@description('Optional public IPv4 address allowed through the PostgreSQL firewall (your workstation, for psql). Empty: none.')
param postgresClientIpAddress string = ''

@description('Memory of each Function App instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum instances per scale group. Instances x DATABASE_POOL_MAX must stay below the server connection limit (B1ms: 35 user connections).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 4

@description('Connections each app instance may hold open to PostgreSQL (DATABASE_POOL_MAX).')
@minValue(1)
@maxValue(200)
param databasePoolMax int = 4

@description('NCRONTAB schedule of the reconcile timer (sec min hour day month weekday).')
param reconcileSchedule string = '0 0 * * * *'

@description('Optional object ID of the deploying user (azd sets AZURE_PRINCIPAL_ID), given rights to upload images and call Vision. Empty: none.')
param principalId string = ''

@description('Kind of principal principalId is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'User'

// --- names ----------------------------------------------------------------------------------------

// main.parameters.json carries azd placeholders (${AZURE_ENV_NAME}, ${AZURE_PRINCIPAL_ID}). azd
// substitutes them; plain `az deployment group create -p infra/main.parameters.json` passes them
// verbatim, so a value still starting with '$' counts as not given.
var envName = startsWith(environmentName, '$') ? 'imagesearch' : environmentName
var userPrincipalId = startsWith(principalId, '$') ? '' : principalId

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(resourceGroup().id, envName))
var tags = {
  'azd-env-name': envName
}
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var storageAccountName = '${abbrs.storageStorageAccounts}${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'

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
  }
}

module vision 'modules/vision.bicep' = {
  name: 'vision'
  params: {
    name: '${abbrs.cognitiveServicesComputerVision}${resourceToken}'
    location: visionLocation
    tags: tags
    skuName: visionSkuName
    disableLocalAuth: visionDisableLocalAuth
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
    elasticCluster: postgresElasticCluster
    clusterSize: postgresClusterSize
    clusterSkuName: postgresClusterSkuName
    clusterSkuTier: postgresClusterSkuTier
    databaseName: 'imagesearch'
    clientIpAddress: postgresClientIpAddress
  }
}

// Every setting the code reads (shared/settings.py DEFAULTS), identity-based wherever a secret could be.
// - ImagesStorage__* / AzureWebJobsStorage__*: identity-based connections ("Common properties for
//   identity-based connections" in the Functions docs: __credential=managedidentity and no __clientId
//   selects the system-assigned identity). A blob trigger also needs the queue service URI, where it
//   reports poison blobs.
// - VISION_KEY is deliberately absent: the app then uses an Entra token (Cognitive Services User).
// - DATABASE_URL has no password: with DATABASE_AUTH=entra the app sends an Entra token as the
//   password, logging in as the role named after the app (its Entra administrator, see below).
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
  // Each instance's share of the Vision resource's rate limit (S1: 20 calls/s, F0: 20 calls/min), so a
  // full scale-out stays under it instead of retrying 429s.
  VISION_MAX_REQUESTS_PER_SECOND: visionSkuName == 'F0' ? '0.3' : string(max(1, 20 / maximumInstanceCount))
  DATABASE_URL: 'postgresql://${functionAppName}@${postgres.outputs.host}:5432/${postgres.outputs.databaseName}?sslmode=require'
  DATABASE_AUTH: 'entra'
  DATABASE_POOL_MAX: string(databasePoolMax)
  HNSW_M: '16'
  HNSW_EF_CONSTRUCTION: '64'
  HNSW_EF_SEARCH: '80'
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
    pythonVersion: '3.11'
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    appSettings: appSettings
  }
}

module postgresAdmin 'modules/postgres-admin.bicep' = {
  name: 'postgres-admin'
  params: {
    serverName: postgres.outputs.name
    principalId: functionApp.outputs.principalId
    principalName: functionApp.outputs.name
    principalType: 'ServicePrincipal'
  }
}

module roleAssignments 'modules/role-assignments.bicep' = {
  name: 'role-assignments'
  params: {
    storageAccountName: storage.outputs.name
    visionAccountName: vision.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: functionApp.outputs.principalId
    userPrincipalId: userPrincipalId
    userPrincipalType: principalType
  }
}

module events 'modules/events.bicep' = {
  name: 'events'
  params: {
    name: '${abbrs.eventGridSystemTopics}${resourceToken}'
    location: location
    tags: tags
    storageAccountId: storage.outputs.id
  }
}

// --- outputs (azd stores them in the environment; post-deploy.sh reads them) ----------------------

output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SEARCH_URL string = 'https://${functionApp.outputs.defaultHostName}/api/search'
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output IMAGES_CONTAINER string = storage.outputs.imagesContainerName
output ImagesStorage__blobServiceUri string = storage.outputs.blobEndpoint
output VISION_ENDPOINT string = vision.outputs.endpoint
output DATABASE_HOST string = postgres.outputs.host
output DATABASE_NAME string = postgres.outputs.databaseName
output EVENTGRID_SYSTEM_TOPIC_NAME string = events.outputs.name
