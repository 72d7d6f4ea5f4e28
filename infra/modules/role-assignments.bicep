// Azure RBAC role assignments: the Function App's identity, the Event Grid topic's identity and,
// optionally, the deploying user. Every role is a built-in role, referenced by its fixed ID (see
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
//
// The Function App (the Functions docs, "Connecting to host storage with an identity" and the Blob
// storage trigger's "Grant permission to the identity"):
// - Storage Blob Data Owner (account): host storage (AzureWebJobsStorage), deployment package, images,
//   thumbnails. It includes generateUserDelegationKey/action, which signs the time-limited read links,
//   so Storage Blob Delegator is not needed on top.
// - Storage Queue Data Contributor (account): the blob trigger reports poison blobs on a queue.
// - Storage Table Data Contributor (account): the host persists diagnostic events in table storage.
// - Cognitive Services User (Vision account): call Azure AI Vision with an Entra token.
// - Monitoring Metrics Publisher (Application Insights): telemetry with local auth disabled.
// Its PostgreSQL rights are not Azure roles: post-provision.sh creates a non-admin database role.
//
// The Event Grid system topic: Storage Blob Data Contributor on the dead-letter container only.
//
// The deploying user (uploads, local CLI, the post-provision migration): data roles on the containers
// that hold images, never on the account: the account also holds azure-webjobs-secrets (function and
// system keys) and the deployment package, and an account-wide data role would let an uploader read
// the keys or replace the code.
// - Storage Blob Data Contributor on the images and thumbnails containers.
// - Storage Blob Data Reader on the dead-letter container (to inspect undelivered events).
// - Cognitive Services User on the Vision account (local searches; the migration asks Vision for the
//   model's dimension).
//
// References (Microsoft Learn, Bicep resource definitions):
// - Microsoft.Authorization/roleAssignments@2022-04-01
//   https://learn.microsoft.com/azure/templates/microsoft.authorization/2022-04-01/roleassignments
// - existing resources: Microsoft.Storage/storageAccounts@2023-05-01,
//   Microsoft.Storage/storageAccounts/blobServices@2023-05-01,
//   Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01,
//   Microsoft.CognitiveServices/accounts@2024-10-01, Microsoft.Insights/components@2020-02-02

@description('Name of the storage account (host storage, deployment package, images, dead letters).')
param storageAccountName string

@description('Container that holds the images.')
param imagesContainerName string

@description('Container that holds the thumbnails.')
param thumbnailsContainerName string

@description('Container that receives the events Event Grid could not deliver.')
param deadLetterContainerName string

@description('Name of the Azure AI Vision account.')
param visionAccountName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Principal ID of the Function App system-assigned identity.')
param appPrincipalId string

@description('Principal ID of the Event Grid system topic system-assigned identity.')
param eventGridPrincipalId string

@description('Optional principal ID of the deploying user, given data access for uploads and tests. Empty: none.')
param userPrincipalId string = ''

@description('Kind of principal userPrincipalId is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param userPrincipalType string = 'User'

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  cognitiveServicesUser: 'a97b65f3-24c7-4388-baec-2e87135dc908'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource imagesContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: imagesContainerName
}

resource thumbnailsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: thumbnailsContainerName
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

resource vision 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: visionAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// --- the Function App -------------------------------------------------------------------------------

resource appBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appCognitiveServicesUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vision.id, appPrincipalId, roles.cognitiveServicesUser)
  scope: vision
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.cognitiveServicesUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// --- the Event Grid system topic: write dead letters ---------------------------------------------

resource eventGridDeadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, eventGridPrincipalId, roles.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: eventGridPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// --- the deploying user (optional): upload images, inspect dead letters, call Vision --------------

resource userImagesContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(imagesContainer.id, userPrincipalId, roles.storageBlobDataContributor)
  scope: imagesContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

resource userThumbnailsContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(thumbnailsContainer.id, userPrincipalId, roles.storageBlobDataContributor)
  scope: thumbnailsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

resource userDeadLetterReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(deadLetterContainer.id, userPrincipalId, roles.storageBlobDataReader)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

resource userCognitiveServicesUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(vision.id, userPrincipalId, roles.cognitiveServicesUser)
  scope: vision
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.cognitiveServicesUser)
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}
