"""evaluation layer (see DESIGN)."""
