// The two Event Grid subscriptions of the storage system topic, deployed by infra/scripts/post-deploy.sh
// once the code is deployed (their webhook URLs carry Functions system keys that exist only then):
//
//   az deployment group create -g <rg> -n event-subscriptions -f infra/subscriptions.bicep \
//     -p appName=<app> systemTopicName=<topic> storageAccountName=<account> imagesContainerName=images
//
// A Bicep file rather than `az eventgrid system-topic event-subscription create`: that command has no
// identity-based dead-letter options (--deadletter-identity, --deadletter-identity-endpoint exist only
// on `az eventgrid event-subscription create`; Azure/azure-cli#26910, Azure/azure-cli-extensions#6331),
// and the storage account accepts no shared keys, so dead-lettering must use the topic's identity.
// The keys are read here with listKeys, so they never pass through the script's command line.
//
// Delivery: Event Grid retries a failed delivery for up to 24 hours or 30 attempts (the values set
// below are the service defaults, written out so the docs can point at them), then writes the event
// as a JSON blob to the dead-letter container. docs/deploy.md ("Dead letters") says what to do then.
//
// References (Microsoft Learn, Bicep resource definitions; checked against Azure/bicep-types-az
// generated/eventgrid/microsoft.eventgrid/2025-02-15/types.json and generated/web/microsoft.web/2024-04-01/types.json,
// which lists the listkeys function of Microsoft.Web/sites/host):
// - Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15
//   https://learn.microsoft.com/azure/templates/microsoft.eventgrid/2025-02-15/systemtopics/eventsubscriptions
// - existing: Microsoft.EventGrid/systemTopics@2025-02-15, Microsoft.Web/sites@2024-04-01,
//   Microsoft.Storage/storageAccounts@2023-05-01

targetScope = 'resourceGroup'

@description('Name of the Function App.')
param appName string

@description('Name of the storage account system topic.')
param systemTopicName string

@description('Name of the storage account that holds the images and the dead-letter container.')
param storageAccountName string

@description('Container whose blob events are delivered.')
param imagesContainerName string = 'images'

@description('Container that receives the events Event Grid could not deliver.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Blob-triggered function (function_app.py).')
param blobFunctionName string = 'index_image'

@description('Event Grid-triggered function that removes deleted images (function_app.py).')
param deleteFunctionName string = 'remove_deleted_image'

@description('Delivery attempts before an event is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes an event is retried before it is dead-lettered (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: appName
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

// Flex Consumption apps may get a unique default host name, so ask for it instead of assuming
// <app>.azurewebsites.net.
var host = site.properties.defaultHostName
var systemKeys = listKeys('${site.id}/host/default', '2024-04-01').systemKeys
var subjectPrefix = '/blobServices/default/containers/${imagesContainerName}/'

var deadLetter = {
  identity: {
    type: 'SystemAssigned'
  }
  deadLetterDestination: {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: storage.id
      blobContainerName: deadLetterContainerName
    }
  }
}

resource blobCreated 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: '${imagesContainerName}-blob-created'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${host}/runtime/webhooks/blobs?functionName=Host.Functions.${blobFunctionName}&code=${systemKeys.blobs_extension}'
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: subjectPrefix
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: deadLetter
  }
}

resource blobDeleted 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: '${imagesContainerName}-blob-deleted'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${host}/runtime/webhooks/eventgrid?functionName=${deleteFunctionName}&code=${systemKeys.eventgrid_extension}'
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobDeleted'
      ]
      subjectBeginsWith: subjectPrefix
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: deadLetter
  }
  // The system topic applies one subscription change at a time.
  dependsOn: [
    blobCreated
  ]
}

output blobCreatedSubscription string = blobCreated.name
output blobDeletedSubscription string = blobDeleted.name
