"""Camera health: frozen stream, exposure, focus, silence and score drift, as their own alert kind."""
