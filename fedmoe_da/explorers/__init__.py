"""Ready-made explorers for the course notebooks: one module per mechanism, each function builds a
``widgets.Explorer`` around a ``viz`` plotting function (notebooks 02-08 show them; tests drive them in Python)."""
