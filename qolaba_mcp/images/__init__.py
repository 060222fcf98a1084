"""Images: safe fetching, format checks, previews, saved files, and the input resolver. Knows nothing of MCP."""
