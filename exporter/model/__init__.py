"""What a record is: the resource types from the OpenAPI file, Arrow schemas, JSON:API records to columns (slow and fast paths)."""
