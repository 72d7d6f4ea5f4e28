// Azure Database for PostgreSQL flexible server (single node, or an elastic cluster running Citus)
// with pgvector allow-listed, Microsoft Entra authentication only (no password exists) and one Entra
// administrator: the deploying user or a group, never the Function App. The app's own, unprivileged role
// and the database are created afterwards by infra/scripts/post-provision.sh, as that administrator.
//
// References (Microsoft Learn, Bicep resource definitions, API version 2025-08-01; properties, enums
// and read-only flags checked against Azure/bicep-types-az generated/postgresql/microsoft.dbforpostgresql/2025-08-01/types.json):
// - Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers
// - Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers/firewallrules
// - Microsoft.DBforPostgreSQL/flexibleServers/configurations@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers/configurations
// - Microsoft.DBforPostgreSQL/flexibleServers/administrators@2025-08-01
//   https://learn.microsoft.com/azure/templates/microsoft.dbforpostgresql/2025-08-01/flexibleservers/administrators
// - Microsoft.Insights/diagnosticSettings@2021-05-01-preview
//   https://learn.microsoft.com/azure/templates/microsoft.insights/2021-05-01-preview/diagnosticsettings
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

// Premium SSD sizes a flexible server accepts (GiB): the disk tiers P4 to P80, where 4095 is the
// largest size that still scales online. Any other value is rejected by the service.
@description('Storage per node in GiB: one of the Premium SSD sizes (32 = P4 ... 32767 = P80). Storage can only grow.')
@allowed([
  32
  64
  128
  256
  512
  1024
  2048
  4095
  4096
  8192
  16384
  32767
])
param storageSizeGB int = 32

@description('Size the server has now, in GiB (0: new server or unknown). A server whose disk grew (storage autogrow) must not be asked for less: the larger of the two is deployed.')
@minValue(0)
param currentStorageSizeGB int = 0

@description('Grow the disk automatically before it fills up (single-node servers only: elastic clusters do not support it).')
param storageAutoGrow bool = true

@description('public: the public endpoint admits every Azure service (the 0.0.0.0 rule: the app has no fixed outbound address). private: the app comes through a private endpoint (main.bicep) and the public endpoint is closed, or open to clientIpAddress only.')
@allowed([
  'public'
  'private'
])
param networkMode string = 'public'

@description('Optional public IPv4 address (your workstation) allowed to connect, e.g. for psql and the post-provision step. Empty: none.')
param clientIpAddress string = ''

@description('Object ID of the Microsoft Entra principal (user, group or service principal) that becomes the server administrator. Required: without an administrator nobody can log in to an Entra-only server.')
@minLength(36)
@maxLength(36)
param administratorObjectId string

@description('Name of the administrator role in PostgreSQL: for a user usually the user principal name, for a group its display name. Logins are matched on the object ID.')
@minLength(1)
param administratorName string

@description('Kind of principal administratorObjectId is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param administratorType string = 'User'

@description('Resource ID of the Log Analytics workspace that receives the diagnostic logs and metrics.')
param logAnalyticsWorkspaceId string

// Elastic clusters run PostgreSQL 17 only, offer a single database named postgres and no storage
// autogrow ("Elastic clusters limitations", Storage: "Storage Auto Scale isn't supported").
var effectiveVersion = elasticCluster ? '17' : version
var effectiveStorageSizeGB = max(storageSizeGB, currentStorageSizeGB)
var effectiveAutoGrow = elasticCluster ? 'Disabled' : (storageAutoGrow ? 'Enabled' : 'Disabled')
var publicMode = (networkMode == 'public')
var publicEndpointOpen = publicMode || !empty(clientIpAddress)

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
      storageSizeGB: effectiveStorageSizeGB
      autoGrow: effectiveAutoGrow
    }
    backup: {
      backupRetentionDays: 7
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: {
      mode: 'Disabled'
    }
    network: {
      publicNetworkAccess: publicEndpointOpen ? 'Enabled' : 'Disabled'
    }
    cluster: elasticCluster ? { clusterSize: clusterSize } : null
  }
}

// 0.0.0.0-0.0.0.0 is the documented way to let Azure services (here: the Function App on Flex
// Consumption, whose outbound addresses are not fixed) reach the server. It admits traffic from any
// Azure tenant; the Entra-only login is what keeps others out. The private network mode drops it.
resource allowAzureServicesRule 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2025-08-01' = if (publicMode) {
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
    allowAzureServicesRule
  ]
}

// Allow-list pgvector; the migration (run as the administrator) then runs CREATE EXTENSION vector.
resource extensions 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2025-08-01' = {
  parent: server
  name: 'azure.extensions'
  properties: {
    value: 'VECTOR'
    source: 'user-override'
  }
  dependsOn: [
    allowAzureServicesRule
    allowClient
  ]
}

// The one administrator: a member of azure_pg_admin, with CREATEROLE and CREATEDB. It creates the
// database, runs the migrations and creates the app's role (infra/scripts/post-provision.sh).
resource administrator 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2025-08-01' = {
  parent: server
  name: administratorObjectId
  properties: {
    principalType: administratorType
    principalName: administratorName
    tenantId: tenant().tenantId
  }
  dependsOn: [
    extensions
  ]
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: server
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

output name string = server.name
output id string = server.id
output host string = server.properties.fullyQualifiedDomainName
output administratorName string = administratorName
