"""The REST API: routes, schemas and the one place errors become status codes."""
