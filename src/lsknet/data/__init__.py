"""data layer (see DESIGN)."""
