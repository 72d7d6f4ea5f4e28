// A private endpoint for one resource, with a DNS zone group that registers its address in the
// matching private DNS zone (so the resource's usual host name resolves to it inside the network, and
// TLS host name verification keeps working: clients still connect to <name>.postgres.database.azure.com
// or <name>.cognitiveservices.azure.com).
//
// References (Microsoft Learn, Bicep resource definitions; checked against Azure/bicep-types-az
// generated/network/microsoft.network/2024-05-01/types.json):
// - Microsoft.Network/privateEndpoints@2024-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.network/2024-05-01/privateendpoints
// - Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.network/2024-05-01/privateendpoints/privatednszonegroups

@description('Name of the private endpoint.')
param name string

@description('Azure region of the private endpoint: the region of its virtual network (the target may be elsewhere).')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Resource ID of the subnet the endpoint gets its address from.')
param subnetId string

@description('Resource ID of the resource the endpoint connects to.')
param targetResourceId string

@description('Private link sub-resource ("group ID"): postgresqlServer for a flexible server, account for an Azure AI services account.')
@allowed([
  'postgresqlServer'
  'account'
])
param groupId string

@description('Resource ID of the private DNS zone for this kind of resource.')
param privateDnsZoneId string

resource endpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: name
        properties: {
          privateLinkServiceId: targetResourceId
          groupIds: [
            groupId
          ]
        }
      }
    ]
  }
}

resource zoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: groupId
        properties: {
          privateDnsZoneId: privateDnsZoneId
        }
      }
    ]
  }
}

output id string = endpoint.id
