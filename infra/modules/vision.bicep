// Azure AI Vision account for multimodal embeddings (vectorizeImage / vectorizeText).
// Keyless by default: the app calls it with a Microsoft Entra token, which needs the custom
// subdomain endpoint https://<customSubDomainName>.cognitiveservices.azure.com/.
//
// The account has no managed identity: it calls nothing on its own behalf (the app calls it).
//
// References (Microsoft Learn, Bicep resource definitions):
// - Microsoft.CognitiveServices/accounts@2024-10-01
//   https://learn.microsoft.com/azure/templates/microsoft.cognitiveservices/2024-10-01/accounts
// - Microsoft.Insights/diagnosticSettings@2021-05-01-preview
//   https://learn.microsoft.com/azure/templates/microsoft.insights/2021-05-01-preview/diagnosticsettings

@description('Account name; also used as the globally unique custom subdomain.')
@minLength(2)
@maxLength(64)
param name string

@description('Region of the account. Only these regions offer multimodal embeddings (Image Analysis 4.0 retrieval).')
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
param location string

@description('Tags applied to every resource.')
param tags object

@description('Pricing tier. F0 (free) allows 20 calls per minute, too few for bulk indexing; S1 allows about 20 per second.')
@allowed([
  'F0'
  'S1'
])
param skuName string = 'S1'

@description('Disable API keys so that only Microsoft Entra tokens are accepted.')
param disableLocalAuth bool = true

@description('public: the public endpoint is open (Entra tokens still required). private: the app comes through a private endpoint (main.bicep) and the public endpoint is closed, or open to allowedIpAddress only.')
@allowed([
  'public'
  'private'
])
param networkMode string = 'public'

@description('In the private mode: one public IPv4 address (your workstation) still allowed through the public endpoint, e.g. for the post-provision step. Empty: none.')
param allowedIpAddress string = ''

@description('Resource ID of the Log Analytics workspace that receives the diagnostic logs and metrics.')
param logAnalyticsWorkspaceId string

// Public: open to all (Entra tokens still required). Private: closed, or open to one address only.
var publicMode = (networkMode == 'public')
var publicEndpointOpen = publicMode || !empty(allowedIpAddress)

resource vision 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  // checkov:skip=CKV_AZURE_238:The account calls nothing on its own behalf (no customer-managed keys, no linked storage), so a managed identity would be an unused credential; the app reaches it with its own identity.
  // checkov:skip=CKV_AZURE_134:In the default public network mode the Function App (Flex Consumption) calls the public endpoint; local auth (keys) is disabled, so every call needs an Entra token and the Cognitive Services User role. networkMode=private closes it (docs/deploy.md, Networking).
  name: name
  location: location
  tags: tags
  kind: 'ComputerVision'
  sku: {
    name: skuName
  }
  properties: {
    customSubDomainName: name
    disableLocalAuth: disableLocalAuth
    publicNetworkAccess: publicEndpointOpen ? 'Enabled' : 'Disabled'
    networkAcls: publicMode ? {
      defaultAction: 'Allow'
    } : {
      defaultAction: 'Deny'
      ipRules: empty(allowedIpAddress) ? [] : [
        {
          value: allowedIpAddress
        }
      ]
    }
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vision
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

output name string = vision.name
output id string = vision.id
output endpoint string = vision.properties.endpoint
