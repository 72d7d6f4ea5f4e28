"""Image similarity search on Azure: all of the Function App's logic lives in this package."""
