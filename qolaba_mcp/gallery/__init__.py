"""The gallery MCP App's page: one self-contained HTML file, served as ui://qolaba/gallery.html."""
