"""ops layer (see DESIGN)."""
