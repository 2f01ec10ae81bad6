"""Small programs that `fullgraph report` runs in its tests, one idea each."""
