// Event Grid system topic for the storage account. Its two webhook subscriptions (BlobCreated to the
// blob trigger, BlobDeleted to the Event Grid trigger) need the Functions system keys, which exist only
// after the code is deployed, so infra/scripts/post-deploy.sh creates them (infra/subscriptions.bicep).
//
// The topic has a system-assigned identity: the subscriptions dead-letter undeliverable events to a
// blob container with it (deadLetterWithResourceIdentity), because the account accepts no shared keys.
// role-assignments.bicep gives this identity Storage Blob Data Contributor on that container only.
//
// References (Microsoft Learn, Bicep resource definitions; checked against Azure/bicep-types-az
// generated/eventgrid/microsoft.eventgrid/2025-02-15/types.json):
// - Microsoft.EventGrid/systemTopics@2025-02-15
//   https://learn.microsoft.com/azure/templates/microsoft.eventgrid/2025-02-15/systemtopics
// - Microsoft.Insights/diagnosticSettings@2021-05-01-preview (delivery failures to Log Analytics)
//   https://learn.microsoft.com/azure/templates/microsoft.insights/2021-05-01-preview/diagnosticsettings

@description('Name of the system topic.')
param name string

@description('Region of the system topic: the region of the storage account it listens to.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Resource ID of the storage account whose blob events the topic publishes.')
param storageAccountId string

@description('Resource ID of the Log Analytics workspace that receives the delivery-failure logs.')
param logAnalyticsWorkspaceId string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: systemTopic
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
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output name string = systemTopic.name
output principalId string = systemTopic.identity.principalId
