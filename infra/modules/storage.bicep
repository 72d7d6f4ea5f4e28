// Storage account shared by the Functions host (AzureWebJobsStorage), the Flex Consumption deployment
// package and the images. Keyless: every client authenticates with Microsoft Entra ID.
//
// References (Microsoft Learn, Bicep resource definitions):
// - Microsoft.Storage/storageAccounts@2023-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.storage/2023-05-01/storageaccounts
// - Microsoft.Storage/storageAccounts/blobServices@2023-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.storage/2023-05-01/storageaccounts/blobservices
// - Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.storage/2023-05-01/storageaccounts/blobservices/containers

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

@description('Days that deleted blobs and containers can be restored.')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 7

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // Network exposure: a Flex Consumption app without VNet integration reaches the account over its
  // public endpoint, so the firewall cannot default to Deny. Access is still Entra-only (no shared
  // keys, no anonymous blobs) and limited by role assignments.
  // checkov:skip=CKV_AZURE_35:Public endpoint needed by the Flex Consumption app without VNet integration and by the uploading user; shared keys and anonymous access are disabled, every request needs an Entra token.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35; this template creates no private endpoints.
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

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output imagesContainerName string = imagesContainer.name
output deploymentContainerName string = deploymentContainer.name
