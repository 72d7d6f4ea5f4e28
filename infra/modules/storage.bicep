// Storage account shared by the Functions host (AzureWebJobsStorage), the Flex Consumption deployment
// package, the images and the Event Grid dead letters. Keyless: every client authenticates with
// Microsoft Entra ID. Data roles on this account are granted per container wherever the holder is not
// the Function App itself (role-assignments.bicep): the host's own containers (azure-webjobs-secrets,
// the deployment package) stay out of reach of whoever uploads images.
//
// References (Microsoft Learn, Bicep resource definitions):
// - Microsoft.Storage/storageAccounts@2023-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.storage/2023-05-01/storageaccounts
// - Microsoft.Storage/storageAccounts/blobServices@2023-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.storage/2023-05-01/storageaccounts/blobservices
// - Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.storage/2023-05-01/storageaccounts/blobservices/containers
// - Microsoft.Insights/diagnosticSettings@2021-05-01-preview (extension resource on the account and on
//   its blob service; the storage logs are emitted per service, the account itself only has metrics)
//   https://learn.microsoft.com/azure/templates/microsoft.insights/2021-05-01-preview/diagnosticsettings

@description('Globally unique storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region of the storage account.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Replication of the account. Standard_LRS is the cheapest; choose ZRS or GRS for more durability.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
])
param skuName string = 'Standard_LRS'

@description('Container that holds the images to index.')
param imagesContainerName string

@description('Container for generated thumbnails.')
param thumbnailsContainerName string

@description('Container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Container where Event Grid writes the events it could not deliver (dead letters).')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Resource ID of the Log Analytics workspace that receives the diagnostic logs and metrics.')
param logAnalyticsWorkspaceId string

@description('Days that deleted blobs and containers can be restored.')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 7

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // Network exposure: the account keeps its public endpoint in both network modes (networkMode in
  // main.bicep). The Flex Consumption platform writes the deployment package to it from outside the app's
  // virtual network, uploaders reach it from their own machines, and Event Grid reads its events and
  // writes dead letters. Access is Entra-only (no shared keys, no anonymous blobs) and limited by role
  // assignments scoped to containers; docs/deploy.md ("Networking") gives the trade-off.
  // checkov:skip=CKV_AZURE_35:Public endpoint needed by the Flex Consumption deployment path, the uploading users and Event Grid; shared keys and anonymous access are disabled, every request needs an Entra token and a container-scoped role.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35; the private network mode puts PostgreSQL and Vision behind private endpoints, not this account (see docs/deploy.md, Networking).
  // checkov:skip=CKV_AZURE_206:Replication is the skuName parameter; LRS is the low-cost default (images can be re-uploaded and the index rebuilt with reconcile). Pass Standard_ZRS or Standard_GRS for more durability.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
  }
}

resource imagesContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: imagesContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource thumbnailsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: thumbnailsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource accountDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: storage
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output imagesContainerName string = imagesContainer.name
output thumbnailsContainerName string = thumbnailsContainer.name
output deploymentContainerName string = deploymentContainer.name
output deadLetterContainerName string = deadLetterContainer.name
