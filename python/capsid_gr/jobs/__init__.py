"""Jobs the CLI runs end to end; each wires the stages in pipeline order."""
