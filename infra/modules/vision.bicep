// Azure AI Vision account for multimodal embeddings (vectorizeImage / vectorizeText).
// Keyless by default: the app calls it with a Microsoft Entra token, which needs the custom
// subdomain endpoint https://<customSubDomainName>.cognitiveservices.azure.com/.
//
// Reference (Microsoft Learn, Bicep resource definition):
// - Microsoft.CognitiveServices/accounts@2024-10-01
//   https://learn.microsoft.com/azure/templates/microsoft.cognitiveservices/2024-10-01/accounts

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

resource vision 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  // checkov:skip=CKV_AZURE_134:The Function App (Flex Consumption, no VNet integration) calls the public endpoint; local auth (keys) is disabled, so every call needs an Entra token and the Cognitive Services User role.
  name: name
  location: location
  tags: tags
  kind: 'ComputerVision'
  sku: {
    name: skuName
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    customSubDomainName: name
    disableLocalAuth: disableLocalAuth
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

output name string = vision.name
output id string = vision.id
output endpoint string = vision.properties.endpoint
