// Event Grid system topic for the storage account. Its two webhook subscriptions (BlobCreated to the
// blob trigger, BlobDeleted to the Event Grid trigger) need the Functions system keys, which exist only
// after the code is deployed, so infra/scripts/post-deploy.sh creates them.
//
// Reference (Microsoft Learn, Bicep resource definition):
// - Microsoft.EventGrid/systemTopics@2025-02-15
//   https://learn.microsoft.com/azure/templates/microsoft.eventgrid/2025-02-15/systemtopics

@description('Name of the system topic.')
param name string

@description('Region of the system topic: the region of the storage account it listens to.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Resource ID of the storage account whose blob events the topic publishes.')
param storageAccountId string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = systemTopic.name
