"""models layer (see DESIGN)."""
