// Azure Database for PostgreSQL flexible server (single node, or an elastic cluster running Citus)
// with pgvector allow-listed and Microsoft Entra authentication only (no password exists).
//
// References (Microsoft Learn, Bicep resource definitions, API version 2025-08-01; the request
// shapes were checked against the 2025-08-01 REST specification and its examples):
// - Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers
// - Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers/firewallrules
// - Microsoft.DBforPostgreSQL/flexibleServers/configurations@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers/configurations
// - Microsoft.DBforPostgreSQL/flexibleServers/databases@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers/databases
//
// The child resources are chained with dependsOn: the server accepts one change at a time and
// answers a concurrent one with ServerIsBusy.

@description('Server name (3-63 lowercase letters, digits and hyphens); the host is <name>.postgres.database.azure.com.')
@minLength(3)
@maxLength(63)
param name string

@description('Azure region of the server.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('PostgreSQL major version of a single-node server (an elastic cluster always uses 17).')
@allowed([
  '16'
  '17'
])
param version string = '17'

@description('Compute size of a single-node server.')
param skuName string = 'Standard_B1ms'

@description('Compute tier of skuName.')
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param skuTier string = 'Burstable'

@description('Deploy an elastic cluster (Citus, sharded across nodes) instead of a single-node server.')
param elasticCluster bool = false

@description('Number of nodes of the elastic cluster.')
@minValue(2)
@maxValue(20)
param clusterSize int = 2

@description('Compute size of each elastic cluster node.')
param clusterSkuName string = 'Standard_D2ds_v5'

@description('Compute tier of clusterSkuName.')
@allowed([
  'GeneralPurpose'
  'MemoryOptimized'
])
param clusterSkuTier string = 'GeneralPurpose'

@description('Storage per node in GiB.')
@minValue(32)
param storageSizeGB int = 32

@description('Database to create on a single-node server. An elastic cluster has exactly one database, postgres.')
param databaseName string = 'imagesearch'

@description('Optional public IPv4 address (your workstation) allowed to connect, e.g. for psql. Empty: none.')
param clientIpAddress string = ''

// Elastic clusters run PostgreSQL 17 only and offer a single database named postgres.
var effectiveVersion = elasticCluster ? '17' : version
var effectiveDatabaseName = elasticCluster ? 'postgres' : databaseName

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: elasticCluster ? clusterSkuName : skuName
    tier: elasticCluster ? clusterSkuTier : skuTier
  }
  properties: {
    version: effectiveVersion
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: tenant().tenantId
    }
    storage: {
      storageSizeGB: storageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 7
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: {
      mode: 'Disabled'
    }
    network: {
      publicNetworkAccess: 'Enabled'
    }
    cluster: elasticCluster ? { clusterSize: clusterSize } : null
  }
}

// 0.0.0.0-0.0.0.0 is the documented way to let Azure services (here: the Function App on Flex
// Consumption, whose outbound addresses are not fixed) reach the server.
resource allowAzureServices 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2025-08-01' = {
  parent: server
  name: 'AllowAllAzureServicesAndResourcesWithinAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

resource allowClient 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2025-08-01' = if (!empty(clientIpAddress)) {
  parent: server
  name: 'AllowClientIp'
  properties: {
    startIpAddress: clientIpAddress
    endIpAddress: clientIpAddress
  }
  dependsOn: [
    allowAzureServices
  ]
}

// Allow-list pgvector; the app then runs CREATE EXTENSION vector itself.
resource extensions 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2025-08-01' = {
  parent: server
  name: 'azure.extensions'
  properties: {
    value: 'VECTOR'
    source: 'user-override'
  }
  dependsOn: [
    allowAzureServices
    allowClient
  ]
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2025-08-01' = if (!elasticCluster) {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  dependsOn: [
    extensions
  ]
}

output name string = server.name
output host string = server.properties.fullyQualifiedDomainName
output databaseName string = effectiveDatabaseName
