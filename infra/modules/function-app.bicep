// Function App on the Flex Consumption plan (Linux, Python) with a system-assigned identity.
// The deployment package lives in a blob container that the app reads with that identity.
// Basic-auth publishing (FTP and the SCM/Kudu site) is switched off: deployments authenticate with
// Microsoft Entra ID (azd, `func azure functionapp publish`, `az functionapp deployment`).
//
// References (Microsoft Learn, Bicep resource definitions):
// - Microsoft.Web/serverfarms@2024-04-01
//   https://learn.microsoft.com/azure/templates/microsoft.web/2024-04-01/serverfarms
// - Microsoft.Web/sites@2024-04-01 (properties.functionAppConfig: deployment, runtime, scaleAndConcurrency;
//   properties.virtualNetworkSubnetId for VNet integration)
//   https://learn.microsoft.com/azure/templates/microsoft.web/2024-04-01/sites
// - Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01 (names 'ftp' and 'scm', allow: false;
//   siteConfig.ftpsState does not cover the SCM site)
//   https://learn.microsoft.com/azure/templates/microsoft.web/2024-04-01/sites/basicpublishingcredentialspolicies
// Types, enums and read-only flags checked against Azure/bicep-types-az generated/web/microsoft.web/2024-04-01/types.json.
// Flex Consumption specifics follow "Create and manage function apps in the Flex Consumption plan"
// (https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to) and the Microsoft
// quickstart template quickstarts/microsoft.web/function-app-flex-managed-identities.

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the Function App; also its host name prefix and its Entra principal name.')
param name string

@description('Azure region of the plan and the app.')
param location string

@description('Tags applied to the plan; the app also gets azd-service-name.')
param tags object

@description('Value of the azd-service-name tag, which azd uses to find the app to deploy service code to.')
param serviceName string = 'api'

@description('Blob endpoint of the storage account that holds the deployment container, e.g. https://<account>.blob.core.windows.net/.')
param deploymentStorageBlobEndpoint string

@description('Container that holds the deployment package.')
param deploymentContainerName string

// Flex Consumption supports Python 3.10, 3.11 and 3.12 ("Supported language stack versions",
// learn.microsoft.com/azure/azure-functions/flex-consumption-plan); this project needs 3.11 or later
// (pyproject.toml requires-python), so 3.10 is left out.
@description('Python version of the Functions runtime.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Memory of each instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound of on-demand instances per function scale group (Flex Consumption applies it to each group: http, blob, and every other function on its own); keep groups x this x DATABASE_POOL_MAX within the database connection limit.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 10

@description('App settings (name to value). Each one becomes an environment variable of the app.')
param appSettings object

@description('Resource ID of the subnet (delegated to Microsoft.App/environments) the app joins. Empty: no VNet integration.')
param virtualNetworkSubnetId string = ''

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy on Flex Consumption is region-dependent and bills always-ready instances; this low-cost default scales to zero.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:The search API is a public HTTP endpoint by design; its routes require a function key (health is anonymous and reveals no data).
  // checkov:skip=CKV_AZURE_17:Clients authenticate with function keys, not client certificates.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales per demand and to zero; a minimum instance count would bill idle always-ready instances.
  // checkov:skip=CKV_AZURE_213:A platform health check pings every instance every minute, which would keep a scale-to-zero app warm and billed; probe the anonymous GET /api/health instead.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${deploymentStorageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName
output principalId string = functionApp.identity.principalId
