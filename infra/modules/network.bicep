// Virtual network of the private network mode (networkMode = 'private' in main.bicep): one subnet the
// Flex Consumption app joins (VNet integration), one for the private endpoints of PostgreSQL and Vision,
// and the private DNS zones that make their usual host names resolve to those endpoints inside it.
//
// Flex Consumption VNet integration needs a subnet delegated to Microsoft.App/environments (Microsoft's
// sample Azure-Samples/azure-functions-flex-consumption-samples, E2E/HTTP-VNET-EH/infra/core/networking/vnet.bicep;
// "Enable virtual network integration", learn.microsoft.com/azure/azure-functions/flex-consumption-how-to).
// Zone names: "Azure Private Endpoint private DNS zone values"
// (learn.microsoft.com/azure/private-link/private-endpoint-dns): privatelink.postgres.database.azure.com
// for flexible servers, privatelink.cognitiveservices.azure.com for Azure AI services accounts.
//
// References (Microsoft Learn, Bicep resource definitions; checked against Azure/bicep-types-az
// generated/network/microsoft.network/2024-05-01 and generated/privatedns/microsoft.network/2024-06-01):
// - Microsoft.Network/networkSecurityGroups@2024-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.network/2024-05-01/networksecuritygroups
// - Microsoft.Network/virtualNetworks@2024-05-01
//   https://learn.microsoft.com/azure/templates/microsoft.network/2024-05-01/virtualnetworks
// - Microsoft.Network/privateDnsZones@2024-06-01
//   https://learn.microsoft.com/azure/templates/microsoft.network/2024-06-01/privatednszones
// - Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01
//   https://learn.microsoft.com/azure/templates/microsoft.network/2024-06-01/privatednszones/virtualnetworklinks

@description('Name of the virtual network.')
param name string

@description('Azure region of the virtual network (the region of the Function App).')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Address space of the virtual network.')
param addressPrefix string = '10.42.0.0/16'

@description('Subnet the Function App joins (delegated to Microsoft.App/environments).')
param appSubnetPrefix string = '10.42.0.0/24'

@description('Subnet of the private endpoints.')
param privateEndpointSubnetPrefix string = '10.42.1.0/24'

// The default security rules of a network security group already allow traffic inside the virtual
// network and deny other inbound traffic; a group per subnet makes that explicit and gives a place
// for stricter rules.
resource appNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-app'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource privateEndpointNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-pe'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          networkSecurityGroup: {
            id: appNsg.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          networkSecurityGroup: {
            id: privateEndpointNsg.id
          }
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource postgresZone 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: 'privatelink.postgres.database.azure.com'
  location: 'global'
  tags: tags
}

resource postgresZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: postgresZone
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource visionZone 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: 'privatelink.cognitiveservices.azure.com'
  location: 'global'
  tags: tags
}

resource visionZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: visionZone
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

output id string = vnet.id
output appSubnetId string = '${vnet.id}/subnets/app'
output privateEndpointSubnetId string = '${vnet.id}/subnets/private-endpoints'
output postgresZoneId string = postgresZone.id
output visionZoneId string = visionZone.id
