// Azure RBAC role assignments for the Function App's identity and, optionally, the deploying user.
// Every role is a built-in role, referenced by its fixed ID (see
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
//
// Why each role (the Functions docs, "Connecting to host storage with an identity" and the Blob
// storage trigger's "Grant permission to the identity"):
// - Storage Blob Data Owner: host storage (AzureWebJobsStorage), deployment package, images.
// - Storage Queue Data Contributor: the blob trigger reports poison blobs on a queue.
// - Storage Table Data Contributor: the host persists diagnostic events in table storage.
// - Storage Blob Delegator: get a user delegation key to sign time-limited read links (SAS).
// - Cognitive Services User: call Azure AI Vision with an Entra token.
// - Monitoring Metrics Publisher: send telemetry to Application Insights with local auth disabled.
//
// References (Microsoft Learn, Bicep resource definitions):
// - Microsoft.Authorization/roleAssignments@2022-04-01
//   https://learn.microsoft.com/azure/templates/microsoft.authorization/2022-04-01/roleassignments
// - existing resources: Microsoft.Storage/storageAccounts@2023-05-01,
//   Microsoft.CognitiveServices/accounts@2024-10-01, Microsoft.Insights/components@2020-02-02

@description('Name of the storage account (host storage, deployment package and images).')
param storageAccountName string

@description('Name of the Azure AI Vision account.')
param visionAccountName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Principal ID of the Function App system-assigned identity.')
param appPrincipalId string

@description('Optional principal ID of the deploying user, given data access for uploads and tests. Empty: none.')
param userPrincipalId string = ''

@description('Kind of principal userPrincipalId is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param userPrincipalType string = 'User'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vision 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: visionAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// --- the Function App ---------------------------------------------------------------------------

resource appBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')
  scope: storage
  properties: {
    // Storage Blob Data Owner
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, '974c5e8b-45b9-4653-ba55-5f855dd0fb88')
  scope: storage
  properties: {
    // Storage Queue Data Contributor
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '974c5e8b-45b9-4653-ba55-5f855dd0fb88')
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3')
  scope: storage
  properties: {
    // Storage Table Data Contributor
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3')
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appBlobDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a')
  scope: storage
  properties: {
    // Storage Blob Delegator
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a')
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appCognitiveServicesUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vision.id, appPrincipalId, 'a97b65f3-24c7-4388-baec-2e87135dc908')
  scope: vision
  properties: {
    // Cognitive Services User
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'a97b65f3-24c7-4388-baec-2e87135dc908')
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, '3913510d-42f4-4e42-8a64-420c390055eb')
  scope: applicationInsights
  properties: {
    // Monitoring Metrics Publisher
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '3913510d-42f4-4e42-8a64-420c390055eb')
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// --- the deploying user (optional): upload images and call Vision while testing -----------------

resource userBlobDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, 'ba92f5b4-2d11-453d-a403-e96b0029c9fe')
  scope: storage
  properties: {
    // Storage Blob Data Contributor
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'ba92f5b4-2d11-453d-a403-e96b0029c9fe')
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}

resource userCognitiveServicesUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(vision.id, userPrincipalId, 'a97b65f3-24c7-4388-baec-2e87135dc908')
  scope: vision
  properties: {
    // Cognitive Services User
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'a97b65f3-24c7-4388-baec-2e87135dc908')
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}
