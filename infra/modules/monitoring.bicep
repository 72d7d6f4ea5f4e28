// Log Analytics workspace and a workspace-based Application Insights component.
//
// References (Microsoft Learn, Bicep resource definitions):
// - Microsoft.OperationalInsights/workspaces@2023-09-01
//   https://learn.microsoft.com/azure/templates/microsoft.operationalinsights/2023-09-01/workspaces
// - Microsoft.Insights/components@2020-02-02
//   https://learn.microsoft.com/azure/templates/microsoft.insights/2020-02-02/components

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Azure region for both resources.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Days to keep logs in the workspace (30 is the minimum of the pay-as-you-go tier).')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Telemetry is accepted only with a Microsoft Entra token: the app authenticates with its managed
    // identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING) and holds Monitoring Metrics Publisher.
    DisableLocalAuth: true
  }
}

output applicationInsightsName string = applicationInsights.name
output connectionString string = applicationInsights.properties.ConnectionString
output logAnalyticsName string = logAnalytics.name
output logAnalyticsId string = logAnalytics.id
