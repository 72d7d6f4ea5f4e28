// Registers a Microsoft Entra principal (the Function App's system-assigned identity) as an
// administrator of the PostgreSQL flexible server. Its database role is named after the principal
// (for a managed identity: the app name), so the app logs in as that role with an Entra token.
//
// Kept apart from postgres.bicep because it needs the app's principal ID, while the app needs the
// server's host name: server -> app -> administrator.
//
// Reference (Microsoft Learn, Bicep resource definition; checked against the 2025-08-01 REST
// specification, AdministratorsMicrosoftEntra.json):
// - Microsoft.DBforPostgreSQL/flexibleServers/administrators@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers/administrators
// - existing parent: Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01

@description('Name of the existing PostgreSQL flexible server.')
param serverName string

@description('Object (principal) ID of the Microsoft Entra principal.')
param principalId string

@description('Display name of the principal; for a managed identity, the name of the resource that owns it.')
param principalName string

@description('Kind of principal.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param principalType string = 'ServicePrincipal'

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01' existing = {
  name: serverName
}

resource administrator 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2025-08-01' = {
  parent: server
  name: principalId
  properties: {
    principalType: principalType
    principalName: principalName
    tenantId: tenant().tenantId
  }
}

output principalName string = administrator.properties.principalName
