"""inference layer (see DESIGN)."""
