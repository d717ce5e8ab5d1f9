"""The lineage store: subjects → records → dataset versions → runs → model versions."""
