"""The Qolaba API: its HTTP client, wire types, model catalogue and live prices. Knows nothing of MCP."""
